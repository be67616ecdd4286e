"""Pure scoring: accuracy per run, mean and standard deviation over k runs, per-category scores, invalid rates.

Accuracies are fractions in [0, 1] everywhere (JSON, MLflow); only printed tables show percent. The standard
deviation is the sample standard deviation over the k runs (0 when k = 1), the spread the paper's Table 9 reports.
The average is macro over the main benchmarks (paper Table 2); rare-disease sets (names starting ``raredis``) are
left out of it and reported by category, with their own macro average over categories (paper Table 1 "Avg").
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from medssr.records import CATEGORIES

RARE_PREFIX = "raredis"
PRIMARY_RARE = "raredis_sub"


@dataclass
class Prediction:
    """One model answer to one benchmark question in one run (a row of data/eval/predictions_<checkpoint>.jsonl)."""

    id: str
    benchmark: str
    run: int
    gold: str
    output: str
    extracted: str | None  # letter read from the free-form output
    constrained: str | None  # letter forced by the second pass (only where extracted is None)
    final: str | None
    correct: bool
    category: str | None = None
    n_tokens: int = 0
    finish_reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Score:
    acc: float  # mean over runs
    std: float  # sample std over runs
    n: int  # questions
    runs: list[float] = field(default_factory=list)


@dataclass
class BenchmarkScore(Score):
    invalid_before: float = 0.0  # share of outputs with no valid letter before the constrained pass
    invalid_after: float = 0.0  # ... and after it
    categories: dict[str, Score] = field(default_factory=dict)


@dataclass
class CheckpointScore:
    benchmarks: dict[str, BenchmarkScore]
    avg: float | None  # macro over main benchmarks
    avg_std: float | None
    raredis: dict[str, Score]  # categories of the primary rare-disease set, in paper order
    raredis_avg: float | None  # macro over those categories
    raredis_avg_std: float | None
    invalid_before: float
    invalid_after: float


def is_rare_benchmark(name: str) -> bool:
    return name.lower().startswith(RARE_PREFIX)


def category_key(category: str) -> str:
    """``Related disorders`` -> ``related_disorders``: the spelling used in metric names and JSON keys."""
    return category.lower().replace(" ", "_")


def accuracy(correct: Sequence[bool]) -> float:
    if not correct:
        raise ValueError("accuracy of no answers is undefined")
    return sum(bool(c) for c in correct) / len(correct)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        raise ValueError("mean of no values is undefined")
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    var = sum((v - m) ** 2 for v in values) / (len(values) - 1)
    return m, math.sqrt(var)


def invalid_rate(letters: Sequence[str | None]) -> float:
    """Share of answers that are None (no valid option letter)."""
    if not letters:
        return 0.0
    return sum(x is None for x in letters) / len(letters)


def _by_run(preds: Iterable[Prediction]) -> dict[int, list[Prediction]]:
    out: dict[int, list[Prediction]] = {}
    for p in preds:
        out.setdefault(p.run, []).append(p)
    return dict(sorted(out.items()))


def score_runs(preds: Sequence[Prediction]) -> Score:
    """Accuracy of each run, then mean and std over runs; n counts distinct questions."""
    runs = [accuracy([p.correct for p in ps]) for ps in _by_run(preds).values()]
    m, s = mean_std(runs)
    return Score(acc=m, std=s, n=len({p.id for p in preds}), runs=runs)


def score_categories(preds: Sequence[Prediction]) -> dict[str, Score]:
    """Per-category scores in paper order (categories with no question are absent; unknown ones come last)."""
    groups: dict[str, list[Prediction]] = {}
    for p in preds:
        if p.category:
            groups.setdefault(p.category, []).append(p)
    order = [c for c in CATEGORIES if c in groups] + sorted(c for c in groups if c not in CATEGORIES)
    return {c: score_runs(groups[c]) for c in order}


def score_benchmark(preds: Sequence[Prediction]) -> BenchmarkScore:
    s = score_runs(preds)
    return BenchmarkScore(acc=s.acc, std=s.std, n=s.n, runs=s.runs,
                          invalid_before=invalid_rate([p.extracted for p in preds]),
                          invalid_after=invalid_rate([p.final for p in preds]),
                          categories=score_categories(preds))


def macro_average(accs: Mapping[str, float]) -> float | None:
    """Mean accuracy over the main benchmarks (rare-disease sets excluded); None when there is none."""
    main = [v for k, v in accs.items() if not is_rare_benchmark(k)]
    return sum(main) / len(main) if main else None


def _macro_over_runs(scores: Sequence[Score]) -> tuple[float | None, float | None]:
    """Macro average of several scores, and its std over runs (runs that every score has)."""
    if not scores:
        return None, None
    k = min(len(s.runs) for s in scores)
    per_run = [sum(s.runs[r] for s in scores) / len(scores) for r in range(k)]
    if not per_run:
        return sum(s.acc for s in scores) / len(scores), 0.0
    return mean_std(per_run)


def primary_rare(names: Iterable[str]) -> str | None:
    """The rare-disease set whose categories feed ``eval/raredis/*``: ``raredis_sub`` if declared, else the first."""
    rare = [n for n in names if is_rare_benchmark(n)]
    return PRIMARY_RARE if PRIMARY_RARE in rare else (rare[0] if rare else None)


def score_checkpoint(preds: Sequence[Prediction]) -> CheckpointScore:
    """All scores of one checkpoint from its predictions (benchmarks in first-seen order)."""
    by_bench: dict[str, list[Prediction]] = {}
    for p in preds:
        by_bench.setdefault(p.benchmark, []).append(p)
    benchmarks = {b: score_benchmark(ps) for b, ps in by_bench.items()}
    avg, avg_std = _macro_over_runs([s for b, s in benchmarks.items() if not is_rare_benchmark(b)])
    rare = primary_rare(benchmarks)
    cats = benchmarks[rare].categories if rare else {}
    r_avg, r_std = _macro_over_runs(list(cats.values()))
    return CheckpointScore(benchmarks=benchmarks, avg=avg, avg_std=avg_std, raredis=cats, raredis_avg=r_avg, raredis_avg_std=r_std,
                           invalid_before=invalid_rate([p.extracted for p in preds]),
                           invalid_after=invalid_rate([p.final for p in preds]))


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def checkpoint_json(score: CheckpointScore) -> dict[str, Any]:
    """The flat-ish block of metrics/eval.json for one checkpoint (what `dvc metrics show/diff` reads)."""
    out: dict[str, Any] = {}
    for b, s in score.benchmarks.items():
        out[b] = {"acc": _r(s.acc), "std": _r(s.std), "n": s.n, "invalid_before": _r(s.invalid_before), "invalid_after": _r(s.invalid_after)}
    if score.avg is not None:
        out["avg"] = _r(score.avg)
        out["avg_std"] = _r(score.avg_std)
    if score.raredis:
        rd: dict[str, Any] = {category_key(c): {"acc": _r(s.acc), "std": _r(s.std), "n": s.n} for c, s in score.raredis.items()}
        rd["avg"] = _r(score.raredis_avg)
        rd["avg_std"] = _r(score.raredis_avg_std)
        out["raredis"] = rd
    out["invalid_before"] = _r(score.invalid_before)
    out["invalid_after"] = _r(score.invalid_after)
    return out


def metric_prefix(checkpoint: str, final: bool) -> str:
    """``eval`` for the final checkpoint, ``eval/<checkpoint>`` for the others (e.g. ``eval/base/medqa/acc``)."""
    return "eval" if final else f"eval/{checkpoint}"


def checkpoint_metrics(score: CheckpointScore, prefix: str = "eval") -> dict[str, float]:
    """MLflow metric names and values: <prefix>/<benchmark>/acc, <prefix>/avg, <prefix>/raredis/<category>/acc, ..."""
    m: dict[str, float] = {}
    for b, s in score.benchmarks.items():
        m[f"{prefix}/{b}/acc"] = s.acc
        m[f"{prefix}/{b}/std"] = s.std
        m[f"{prefix}/{b}/n"] = s.n
        m[f"{prefix}/{b}/invalid_before"] = s.invalid_before
        m[f"{prefix}/{b}/invalid_after"] = s.invalid_after
    if score.avg is not None:
        m[f"{prefix}/avg"] = score.avg
        m[f"{prefix}/avg_std"] = score.avg_std or 0.0
    for c, s in score.raredis.items():
        m[f"{prefix}/raredis/{category_key(c)}/acc"] = s.acc
        m[f"{prefix}/raredis/{category_key(c)}/std"] = s.std
        m[f"{prefix}/raredis/{category_key(c)}/n"] = s.n
    if score.raredis_avg is not None:
        m[f"{prefix}/raredis/avg"] = score.raredis_avg
        m[f"{prefix}/raredis/avg_std"] = score.raredis_avg_std or 0.0
    m[f"{prefix}/invalid_before"] = score.invalid_before
    m[f"{prefix}/invalid_after"] = score.invalid_after
    return m


def format_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Benchmarks x checkpoints, accuracy in percent (± std when k > 1), like the paper's Table 2.

    ``results`` is metrics/eval.json: {checkpoint: checkpoint_json(...)}.
    """
    ckpts = [c for c, v in results.items() if isinstance(v, Mapping)]
    benches: list[str] = []
    for c in ckpts:
        for b, v in results[c].items():
            if isinstance(v, Mapping) and "acc" in v and b not in benches:
                benches.append(b)
    main = [b for b in benches if not is_rare_benchmark(b)]
    rare = [b for b in benches if is_rare_benchmark(b)]
    cats: list[str] = []
    for c in ckpts:
        for k, v in (results[c].get("raredis") or {}).items():
            if isinstance(v, Mapping) and k not in cats:
                cats.append(k)

    def cell(d: Any) -> str:
        if not isinstance(d, Mapping) or d.get("acc") is None:
            return "-"
        s = f"{100 * d['acc']:.2f}"
        return s + (f" ±{100 * d['std']:.2f}" if d.get("std") else "")

    rows = [("benchmark", *ckpts)]
    rows += [(b, *(cell(results[c].get(b)) for c in ckpts)) for b in main]
    rows.append(("avg", *(cell({"acc": results[c].get("avg"), "std": results[c].get("avg_std")}) for c in ckpts)))
    rows += [(b, *(cell(results[c].get(b)) for c in ckpts)) for b in rare]
    rows += [(f"  {k}", *(cell((results[c].get("raredis") or {}).get(k)) for c in ckpts)) for k in cats]
    if cats:
        rows.append(("  raredis avg", *(cell({"acc": (results[c].get("raredis") or {}).get("avg"),
                                               "std": (results[c].get("raredis") or {}).get("avg_std")}) for c in ckpts)))
    rows.append(("invalid before/after %", *(f"{100 * results[c].get('invalid_before', 0):.1f}/{100 * results[c].get('invalid_after', 0):.1f}"
                                             for c in ckpts)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths, strict=True))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
