"""Physician review of synthetic questions (paper §4.4, Table 4; Appendix B.4, Tables 5-6).

``export_review`` draws a reproducible random sample of labeled synthetic questions into a review sheet: a CSV
(one row per question; open it in a spreadsheet, fill the last columns, one copy per reviewer) and a printable,
self-contained HTML page with the same questions. ``import_review`` reads filled sheets back, checks every row,
and computes the Table 4 figures per group and overall; ``main_review`` is ``medssr review export|import``.

Row numbers in error messages are spreadsheet rows: the header is row 1, the first question row 2. Cells hold no
line breaks, so they are also the line numbers a text editor shows.
"""

from __future__ import annotations

import argparse
import csv
import html
import math
import random
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medssr.errors import MedssrError
from medssr.files import atomic_path, write_text_atomic
from medssr.records import LETTERS, Question, read_questions

RATING_COLUMNS = ("correct", "harmful", "plausibility", "reviewer", "group")
GROUPS = ("senior", "junior")
_YES = {"y", "yes", "1", "true", "t", "x"}
_NO = {"n", "no", "0", "false", "f"}


class ReviewError(MedssrError, ValueError):
    """One or more malformed rows in review sheets; each line reads ``file:row: column: problem``."""

    def __init__(self, errors: Sequence[str]):
        self.errors = list(errors)
        shown = self.errors[:30]
        more = f"\n... and {len(self.errors) - len(shown)} more" if len(self.errors) > len(shown) else ""
        super().__init__("\n".join(shown) + more)


def _one_line(text: str | None) -> str:
    return " ".join(str(text or "").split())


def sample_for_review(questions: Sequence[Question], n: int, seed: int = 0) -> list[Question]:
    """A reproducible random sample of ``n`` questions (all of them, shuffled, when there are fewer)."""
    rng = random.Random(seed)
    idx = rng.sample(range(len(questions)), min(n, len(questions)))
    return [questions[i] for i in idx]


def _header(max_options: int) -> list[str]:
    opts = [f"option_{k}" for k in LETTERS[:max_options]]
    return ["row", "id", "rare_disease", "question", *opts, "label", "label_text", "agreement", *RATING_COLUMNS, "comment"]


def export_note(path: str | Path, asked: int) -> str | None:
    """Why an export holds fewer than the ``asked`` questions (the file has fewer labeled ones), or None when it holds them all."""
    qs = read_questions(path)
    labeled = sum(q.label is not None for q in qs)
    if labeled >= asked:
        return None
    unlabeled = len(qs) - labeled
    why = f"; the other {unlabeled} carry no label (the label stage kept no majority for them)" if unlabeled else ""
    return f"{labeled} of the {asked} asked (--n): {path} holds only {labeled} labeled questions{why}"


def export_review(synthetic_labeled_path: str | Path, out_dir: str | Path, n: int = 200, seed: int = 0) -> tuple[Path, Path]:
    """Write ``review_n<N>_seed<S>.csv`` and ``.html`` with a seeded sample of labeled synthetic questions."""
    qs = [q for q in read_questions(synthetic_labeled_path) if q.label is not None]
    if not qs:
        raise ValueError(f"{synthetic_labeled_path}: no labeled questions to review (run the label stage first)")
    picked = sample_for_review(qs, n, seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"review_n{len(picked)}_seed{seed}"
    max_opts = max(len(q.options) for q in picked)
    header = _header(max_opts)
    csv_path, html_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.html"
    rows = []
    for i, q in enumerate(picked, 1):
        label = q.label or ""
        opts = [_one_line(q.options.get(k, "")) for k in LETTERS[:max_opts]]
        agreement = "" if q.agreement is None else f"{q.agreement:.2f}"
        rows.append([str(i), q.id, _one_line(q.rare_disease), _one_line(q.question), *opts, label, _one_line(q.options.get(label, "")),
                     agreement, "", "", "", "", "", ""])
    # BOM: spreadsheet apps then read UTF-8 right
    with atomic_path(csv_path) as tmp, open(tmp, "w", encoding="utf-8-sig", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    write_text_atomic(html_path, _review_html(picked, stem, seed, Path(synthetic_labeled_path).name))
    return csv_path, html_path


LABEL_ATTR = ' class="label"'
_CSS = """
body{font-family:Georgia,serif;max-width:52em;margin:2em auto;color:#111}
h1{font-size:1.4em} .meta{color:#555;font-size:.9em}
.q{border:1px solid #999;border-radius:4px;padding:.8em 1em;margin:1.2em 0;page-break-inside:avoid}
.q h2{font-size:1em;margin:0 0 .4em} .stem{white-space:pre-wrap} ol{list-style:none;padding-left:.5em}
li.label{font-weight:bold} li.label::after{content:"  \\2190 voted label"}
table.rate{border-collapse:collapse;margin-top:.6em;width:100%} table.rate td{border:1px solid #aaa;padding:.35em .5em}
@media print{body{margin:0} .q{margin:.6em 0}}
"""


def _review_html(picked: Sequence[Question], stem: str, seed: int, source: str) -> str:
    """A printable page with no external resources (no CDN, no scripts)."""
    e = html.escape
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{e(stem)}</title><style>{_CSS}</style></head><body>",
             f"<h1>Physician review of synthetic questions</h1><p class=\"meta\">{len(picked)} questions drawn with seed {seed} from "
             f"{e(source)}. For each question mark whether the question and its voted answer are correct, whether it could be "
             "harmful, and how clinically plausible it is (1 = highly implausible, 5 = highly plausible). Enter the ratings in the "
             "CSV sheet of the same name (one copy per reviewer).</p>"]
    for i, q in enumerate(picked, 1):
        rare = f" &middot; rare disease: {e(q.rare_disease)}" if q.rare_disease else ""
        agree = f" &middot; vote agreement {q.agreement:.0%}" if q.agreement is not None else ""
        opts = "".join(f"<li{LABEL_ATTR if k == q.label else ''}>{e(k)}. {e(v)}</li>" for k, v in q.options.items())
        parts.append(
            f"<div class=\"q\"><h2>Row {i} &middot; {e(q.id)}{rare}{agree}</h2><div class=\"stem\">{e(q.question)}</div><ol>{opts}</ol>"
            "<table class=\"rate\"><tr><td>Correct (y/n)</td><td>Harmful (y/n)</td><td>Plausibility (1-5)</td>"
            "<td>Reviewer</td><td>Group (senior/junior)</td></tr><tr><td>&nbsp;</td><td></td><td></td><td></td><td></td></tr></table></div>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


@dataclass
class Rating:
    file: str
    row: int
    id: str
    correct: bool
    harmful: bool
    plausibility: int
    reviewer: str
    group: str


@dataclass
class GroupStats:
    n_ratings: int
    n_questions: int
    n_incorrect: int  # questions marked incorrect by at least one reviewer of the group
    n_harmful: int
    incorrect_pct: float
    harmful_pct: float
    plausibility_mean: float
    plausibility_sd: float  # sample SD over ratings
    reviewers: dict[str, dict[str, Any]] = field(default_factory=dict)


def _yes_no(value: str, column: str, where: str, errors: list[str]) -> bool | None:
    v = value.strip().lower()
    if v in _YES:
        return True
    if v in _NO:
        return False
    errors.append(f"{where}: {column}: expected y or n, got {value!r}")
    return None


def read_sheet(path: str | Path, errors: list[str]) -> list[Rating]:
    """Ratings of one filled sheet; rows with no rating at all are skipped (a reviewer rates only their share)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        errors.append(f"{path}: no such file")
        return []
    except UnicodeDecodeError:
        errors.append(f"{path}: not UTF-8 text (save the sheet as 'CSV UTF-8')")
        return []
    first = text.split("\n", 1)[0]
    delim = max(",;\t", key=first.count)  # spreadsheets in some locales save ';'-separated CSV
    reader = csv.reader(text.splitlines(), delimiter=delim)
    header = [h.strip().lower() for h in next(reader, [])]
    missing = [c for c in ("id", *RATING_COLUMNS) if c not in header]
    if missing:
        errors.append(f"{path}:1: {missing[0]}: column missing from the header (export a fresh sheet with `medssr review export`)")
        return []
    col = {c: header.index(c) for c in ("id", *RATING_COLUMNS)}
    out = []
    for row_no, cells in enumerate(reader, 2):
        if not any(c.strip() for c in cells):
            continue
        cells = cells + [""] * (len(header) - len(cells))
        val = {c: cells[i].strip() for c, i in col.items()}
        if not any(val[c] for c in ("correct", "harmful", "plausibility")):
            continue
        where = f"{path}:{row_no}"
        n_err = len(errors)
        if not val["id"]:
            errors.append(f"{where}: id: missing")
        correct = _yes_no(val["correct"], "correct", where, errors)
        # harmful is judged for incorrect questions; a correct one left blank is not harmful
        harmful = False if (not val["harmful"] and correct) else _yes_no(val["harmful"], "harmful", where, errors)
        plaus = None
        try:
            plaus = int(float(val["plausibility"])) if float(val["plausibility"]).is_integer() else None
        except ValueError:
            pass
        if plaus is None or not 1 <= plaus <= 5:
            errors.append(f"{where}: plausibility: expected 1-5, got {val['plausibility']!r}")
        if not val["reviewer"]:
            errors.append(f"{where}: reviewer: missing")
        group = val["group"].lower()
        if group not in GROUPS:
            errors.append(f"{where}: group: expected senior or junior, got {val['group']!r}")
        if len(errors) == n_err:
            out.append(Rating(str(path), row_no, val["id"], bool(correct), bool(harmful), int(plaus), val["reviewer"], group))
    return out


def _stats(ratings: Sequence[Rating]) -> GroupStats:
    qids = {r.id for r in ratings}
    bad = {r.id for r in ratings if not r.correct}
    harm = {r.id for r in ratings if r.harmful}
    scores = [r.plausibility for r in ratings]
    mean = sum(scores) / len(scores)
    sd = math.sqrt(sum((s - mean) ** 2 for s in scores) / (len(scores) - 1)) if len(scores) > 1 else 0.0
    reviewers: dict[str, dict[str, Any]] = {}
    for name in sorted({r.reviewer for r in ratings}):
        mine = [r for r in ratings if r.reviewer == name]
        reviewers[name] = {"n": len(mine), "n_incorrect": sum(not r.correct for r in mine), "n_harmful": sum(r.harmful for r in mine),
                           "plausibility_mean": sum(r.plausibility for r in mine) / len(mine)}
    return GroupStats(n_ratings=len(ratings), n_questions=len(qids), n_incorrect=len(bad), n_harmful=len(harm),
                      incorrect_pct=100 * len(bad) / len(qids), harmful_pct=100 * len(harm) / len(qids),
                      plausibility_mean=mean, plausibility_sd=sd, reviewers=reviewers)


def review_stats(ratings: Sequence[Rating]) -> dict[str, GroupStats]:
    """Table 4 per group and overall. A question counts as incorrect (harmful) when any reviewer of the set marked it
    so, over the distinct questions rated (paper: senior 1/200, junior 0/200, overall 0.50%); plausibility is the mean
    and sample SD over all ratings."""
    out = {g: _stats([r for r in ratings if r.group == g]) for g in GROUPS if any(r.group == g for r in ratings)}
    if ratings:
        out["overall"] = _stats(ratings)
    return out


def review_metrics(stats: dict[str, GroupStats]) -> dict[str, float]:
    """MLflow names: review/<group>/incorrect_pct, harmful_pct, plausibility_mean, plausibility_sd, n_questions, n_ratings, ..."""
    from medssr.metric_names import review_metric

    m: dict[str, float] = {}
    for g, s in stats.items():
        for k in ("incorrect_pct", "harmful_pct", "plausibility_mean", "plausibility_sd", "n_questions", "n_ratings", "n_incorrect", "n_harmful"):
            m[review_metric(g, k)] = float(getattr(s, k))
    return m


def format_review_table(stats: dict[str, GroupStats]) -> str:
    """Markdown in the shape of the paper's Table 4 (plus rating counts and SD, as in Table 5)."""
    lines = ["| Group | # Questions | # Ratings | Incorrect | Harmful | Plausibility (SD) |", "|---|---|---|---|---|---|"]
    for g, s in stats.items():
        lines.append(f"| {g.capitalize()} | {s.n_questions} | {s.n_ratings} | {s.n_incorrect}/{s.n_questions} ({s.incorrect_pct:.2f}%) | "
                     f"{s.n_harmful}/{s.n_questions} ({s.harmful_pct:.2f}%) | {s.plausibility_mean:.2f}/5 ({s.plausibility_sd:.2f}) |")
    return "\n".join(lines)


def _error_order(msg: str) -> tuple[str, int]:
    m = re.match(r"(.*?):(\d+): ", msg)
    return (m.group(1), int(m.group(2))) if m else (msg, 0)


def import_review(paths: Sequence[str | Path], log_mlflow: bool = True, experiment: str | None = None) -> dict[str, Any]:
    """Read filled sheets, compute Table 4 figures, log them to MLflow; raises ReviewError listing every bad row."""
    errors: list[str] = []
    ratings = [r for p in paths for r in read_sheet(p, errors)]
    seen: dict[tuple[str, str], str] = {}
    for r in ratings:
        key = (r.reviewer, r.id)
        if key in seen:
            errors.append(f"{r.file}:{r.row}: id: reviewer {r.reviewer!r} already rated {r.id!r} ({seen[key]})")
        else:
            seen[key] = f"{r.file}:{r.row}"
    if errors:
        raise ReviewError(sorted(errors, key=_error_order))
    if not ratings:
        raise ReviewError([f"{', '.join(str(p) for p in paths)}: no rated rows (fill correct, harmful, plausibility, reviewer, group)"])
    stats = review_stats(ratings)
    result: dict[str, Any] = {g: {k: v for k, v in vars(s).items()} for g, s in stats.items()}
    metrics = review_metrics(stats)
    if log_mlflow:
        result["mlflow_run_id"] = _log_review(metrics, [str(p) for p in paths], experiment)
    result["metrics"] = metrics
    return result


def _default_experiment() -> str:
    from medssr.tracking import workspace_root

    p = workspace_root() / "params.yaml"
    if p.exists():
        from medssr.config import load_params

        return load_params(p).project.experiment
    return "medssr"


def _log_review(metrics: dict[str, float], files: list[str], experiment: str | None) -> str:
    """A plain run in the project's experiment, tagged medssr_role=review (a review is done by people, after the pipeline)."""
    from medssr.tracking import plain_run

    # the tracking gate: every string scrubbed of credentials, log_metrics checks each name against the registry
    with plain_run(experiment or _default_experiment(), "review", {"medssr_role": "review", "medssr_stage": "review"}) as (mlflow, run_id):
        mlflow.log_param("review.files", ", ".join(files)[:6000])
        mlflow.log_metrics(metrics)
        return run_id


def review_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medssr review", description="physician review sheets for synthetic questions (paper Table 4)")
    sub = p.add_subparsers(dest="action", required=True)
    ex = sub.add_parser("export", help="write a CSV + printable HTML review sheet",
                        description="A seeded sample of labeled synthetic questions as review_n<N>_seed<S>.csv and .html.")
    ex.add_argument("--n", type=int, default=200, help="questions to sample (default 200; all of them when the file has fewer)")
    ex.add_argument("--seed", type=int, default=0, help="sampling seed: the same seed gives the same sheet (default 0)")
    ex.add_argument("--input", default="data/labeled/synthetic.jsonl", help="labeled synthetic questions (JSONL, the label stage's output)")
    ex.add_argument("--out", default="reports/review", help="directory for the CSV and HTML sheets (default reports/review)")
    im = sub.add_parser("import", help="score filled sheets and log Table 4 figures to MLflow",
                        description="Check every row of filled sheets, print Table 4 per group and overall, log them to MLflow.")
    im.add_argument("files", nargs="+", help="filled review CSV sheets (one per physician)")
    im.add_argument("--no-mlflow", action="store_true", help="print the table only, log no MLflow run")
    im.add_argument("--experiment", default=None, help="MLflow experiment (default: project.experiment of params.yaml)")
    return p


def main_review(argv: Sequence[str] | None = None) -> int:
    """`medssr review export [--n 200] [--seed 0] [--input FILE] [--out DIR]` / `medssr review import FILE... [--no-mlflow]`."""
    args = review_parser().parse_args(list(argv or []))
    try:
        if args.action == "export":
            csv_path, html_path = export_review(args.input, args.out, n=args.n, seed=args.seed)
            note = export_note(args.input, args.n)
            print(f"[review] wrote {csv_path} and {html_path}" + (f": {note}" if note else f" ({args.n} questions)"))
            return 0
        result = import_review(args.files, log_mlflow=not args.no_mlflow, experiment=args.experiment)
    except ReviewError as e:
        print(f"medssr review: malformed sheet(s):\n{e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as e:
        print(f"medssr review: {e}", file=sys.stderr)
        return 2
    stats = {g: GroupStats(**{k: v for k, v in d.items()}) for g, d in result.items() if g in (*GROUPS, "overall")}
    print(format_review_table(stats))
    if result.get("mlflow_run_id"):
        print(f"[review] logged to MLflow run {result['mlflow_run_id']}")
    return 0
