"""reports/report.md and PNG figures from the MLflow runs of one experiment (paper Tables 1-4, Figs. 4 and 6).

Reads every pipeline parent run (tag ``medssr_role=pipeline``) with its nested stage runs (tag ``medssr_stage``):
params from the parent, metrics from the parent merged with its latest stage runs, per-step training histories
(``train/<stage>/reward_mean`` ...) from the stage runs, and physician review runs (tag ``medssr_role=review``).
Which ``eval/<x>/...`` prefixes are checkpoints is read from the tags the evaluate stage sets
(``medssr_eval_checkpoints``, ``medssr_eval_final``). Missing pieces become a sentence, never an error.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.scoring import category_key, is_rare_benchmark
from medssr.config import set_offline_env
from medssr.files import atomic_path, write_text_atomic
from medssr.records import CATEGORIES

# paper Table 1 column order
TABLE1_ORDER = ("Symptoms", "Causes", "Diagnosis", "Others", "Related disorders", "Treatment", "Affects")
CURVE_KEYS = ("reward_mean", "kl", "distinct_answers", "answer_entropy", "accuracy", "heldout_acc", "zero_std_group_share")
MAX_FIG_ROWS = 8
FIG_DIR = "figures"  # under the report's directory; report.md links figures/<name>.png
FIGURES = ("table2_benchmarks.png", "table1_raredis.png", "fig4_rare_ratio.png", "fig6_training.png")


@dataclass
class Cell:
    acc: float
    std: float = 0.0  # run-to-run (decoding) std of one run; the std across pipeline runs of a setting when averaged
    ci_low: float | None = None  # Wilson (benchmark, category) or bootstrap (average) interval of one run
    ci_high: float | None = None
    n: int | None = None  # questions


# the p of a vs_base entry: a benchmark's (category's) McNemar, an average's permutation test, its pooled McNemar
_P_KEYS = (("p_perm_macro", "perm"), ("p_mcnemar", "mcnemar"), ("p_mcnemar_pooled", "pooled"))


@dataclass
class Diff:
    """A checkpoint minus the reference (``eval/<ckpt>/vs_base/<part>/...``): paired bootstrap interval and p: the exact
    McNemar p of a benchmark (category), the permutation p of an average's macro difference (``test`` 'perm')."""

    diff: float
    p: float
    ci_low: float | None = None
    ci_high: float | None = None
    test: str = "mcnemar"  # 'mcnemar' | 'perm' (p_perm_macro) | 'pooled' (an average's p_mcnemar_pooled, older stores)


@dataclass
class PipelineRun:
    run_id: str
    name: str
    start_time: int
    params: dict[str, str]
    metrics: dict[str, float]
    checkpoints: list[str]
    final: str
    histories: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    label: str = ""

    @property
    def strategy(self) -> str:
        return self.params.get("train.strategy", "?")

    @property
    def rare_ratio(self) -> float | None:
        try:
            return float(self.params["synth.rare_ratio"])
        except (KeyError, ValueError):
            return None

    @property
    def rare_share_target(self) -> float | None:
        """synth.rare_share_target (None: α fixed, or a run from before the param existed)."""
        try:
            return float(self.params["synth.rare_share_target"])
        except (KeyError, ValueError):  # MLflow logs a null param as "None"
            return None

    @property
    def rare_share_measured(self) -> float | None:
        """The synthetic set's rare-disease share as the benchmark tagger measures it (the paper's ratio, §4.2-4.3)."""
        return self.metrics.get("synth/rare_share_measured")

    @property
    def setting(self) -> tuple[str, float] | None:
        """What a sweep varied: ("target", measured share asked for) or ("α", synth.rare_ratio); runs of one setting are averaged."""
        if self.rare_share_target is not None:
            return ("target", self.rare_share_target)
        return ("α", self.rare_ratio) if self.rare_ratio is not None else None

    def prefix(self, ckpt: str) -> str:
        return "eval" if ckpt == self.final else f"eval/{ckpt}"

    def _cell(self, base: str, avg: bool = False) -> Cell:
        """The Cell logged under ``base`` (``<prefix>/<benchmark>`` ...; ``<prefix>/avg`` with ``avg``): acc, std, interval, n."""
        m, sep = self.metrics, "_" if avg else "/"
        std = m.get(f"{base}{sep}run_std", m.get(f"{base}{sep}std", 0.0))  # runs logged before run_std used std
        n = m.get(f"{base}{sep}n")
        return Cell(m[base if avg else f"{base}/acc"], std, m.get(f"{base}{sep}ci_low"), m.get(f"{base}{sep}ci_high"),
                    None if n is None else int(n))

    def benchmarks(self, ckpt: str) -> dict[str, Cell]:
        """{benchmark: Cell} of one checkpoint, plus 'avg' when logged."""
        pre = self.prefix(ckpt)
        out = {m.group(1): self._cell(f"{pre}/{m.group(1)}") for k in self.metrics
               if (m := re.fullmatch(rf"{re.escape(pre)}/([^/]+)/acc", k)) and m.group(1) != "raredis"}
        if f"{pre}/avg" in self.metrics:
            out["avg"] = self._cell(f"{pre}/avg", avg=True)
        return out

    def categories(self, ckpt: str) -> dict[str, Cell]:
        """{category key: Cell} of RareDis-Sub for one checkpoint, plus 'avg' (macro over categories)."""
        pre = f"{self.prefix(ckpt)}/raredis"
        out = {m.group(1): self._cell(f"{pre}/{m.group(1)}") for k in self.metrics
               if (m := re.fullmatch(rf"{re.escape(pre)}/([^/]+)/acc", k))}
        if f"{pre}/avg" in self.metrics:
            out["avg"] = self._cell(f"{pre}/avg", avg=True)
        return out

    def part(self, ckpt: str, kind: str) -> dict[str, Cell]:
        """:meth:`benchmarks` (kind 'bench') or :meth:`categories` (kind 'cat') of one checkpoint."""
        return self.benchmarks(ckpt) if kind == "bench" else self.categories(ckpt)

    def differences(self, ckpt: str, kind: str, reference: str = "base") -> dict[str, Diff]:
        """{benchmark or 'avg': Diff} (kind 'bench') or {category key or 'avg': Diff} (kind 'cat') against the reference."""
        pre = f"{self.prefix(ckpt)}/vs_{reference}" + ("/raredis" if kind == "cat" else "")
        out = {}
        for k, v in self.metrics.items():
            m = re.fullmatch(rf"{re.escape(pre)}/([^/]+)/diff", k)
            if not m:
                continue
            base = f"{pre}/{m.group(1)}"
            found = next(((key, test) for key, test in _P_KEYS if f"{base}/{key}" in self.metrics), None)
            if found:
                key, test = found
                if m.group(1) == "avg" and test == "mcnemar":
                    test = "pooled"  # a run logged before p_perm_macro: an average's p_mcnemar pooled its parts
                out[m.group(1)] = Diff(v, self.metrics[f"{base}/{key}"], self.metrics.get(f"{base}/ci_low"),
                                       self.metrics.get(f"{base}/ci_high"), test)
        return out

    @property
    def evaluated(self) -> bool:
        return any(self.benchmarks(c) or self.categories(c) for c in self.checkpoints)


def _experiment_from_params() -> str:
    from medssr.tracking import workspace_root

    for p in (Path("params.yaml"), workspace_root() / "params.yaml"):
        if p.exists():
            from medssr.config import load_params

            return load_params(p).project.experiment
    return "medssr"


def collect_runs(experiment: str) -> tuple[list[PipelineRun], list[Any]]:
    """Pipeline runs (oldest first) with merged metrics and training histories, and the review runs (newest first)."""
    set_offline_env()
    from mlflow.tracking import MlflowClient

    from medssr.tracking import tracking_uri

    client = MlflowClient(tracking_uri=tracking_uri())
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return [], []
    runs, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    children: dict[str, list[Any]] = {}
    for r in runs:
        pid = r.data.tags.get("mlflow.parentRunId")
        if pid:
            children.setdefault(pid, []).append(r)
    out = []
    for r in runs:
        if r.data.tags.get("medssr_role") != "pipeline":
            continue
        latest: dict[str, Any] = {}
        for c in sorted(children.get(r.info.run_id, []), key=lambda c: c.info.start_time):
            latest[c.data.tags.get("medssr_stage", c.info.run_name)] = c  # a re-run stage replaces the earlier one
        metrics = dict(r.data.metrics)
        tags = dict(r.data.tags)
        for c in latest.values():
            metrics.update(c.data.metrics)
            for t in ("medssr_eval_checkpoints", "medssr_eval_final"):
                if t in c.data.tags:
                    tags[t] = c.data.tags[t]
        try:
            ckpts = json.loads(tags.get("medssr_eval_checkpoints", "[]"))
        except json.JSONDecodeError:
            ckpts = []
        final = tags.get("medssr_eval_final") or (ckpts[-1] if ckpts else "final")
        if final not in ckpts:
            ckpts.append(final)
        histories: dict[str, list[tuple[int, float]]] = {}
        for c in latest.values():
            for key in c.data.metrics:
                if key.startswith("train/") and (key.rsplit("/", 1)[-1] in CURVE_KEYS or "acc" in key.rsplit("/", 1)[-1]):
                    hist = client.get_metric_history(c.info.run_id, key)
                    histories[key] = sorted((h.step, h.value) for h in hist)
        out.append(PipelineRun(run_id=r.info.run_id, name=tags.get("dvc_exp_name") or r.info.run_name or r.info.run_id[:8],
                               start_time=r.info.start_time or 0, params=dict(r.data.params), metrics=metrics, checkpoints=ckpts,
                               final=final, histories=histories))
    out.sort(key=lambda p: p.start_time)
    names = [p.name for p in out]
    for p in out:
        p.label = p.name if names.count(p.name) == 1 else f"{p.name}-{p.run_id[:6]}"
    reviews = sorted((r for r in runs if r.data.tags.get("medssr_role") == "review"), key=lambda r: -(r.info.start_time or 0))
    return out, reviews


# --------------------------------------------------------------------------------------------------------------
# markdown


def _pct(c: Cell | None, with_std: bool, with_ci: bool = False) -> str:
    """``18.75 [6.6, 43.0] ± 1.25``: accuracy %, its interval (when asked and logged) and std (when asked and non-zero)."""
    if c is None:
        return "-"
    s = f"{100 * c.acc:.2f}"
    if with_ci and c.ci_low is not None and c.ci_high is not None:
        s += f" [{100 * c.ci_low:.1f}, {100 * c.ci_high:.1f}]"
    return s + (f" ± {100 * c.std:.2f}" if with_std and c.std >= 5e-5 else "")


def _n_row(rows: Sequence[tuple[str, Mapping[str, Cell]]], cols: Sequence[str]) -> list[str]:
    """Questions per column: one number when every row agrees, else the distinct counts joined by '/'."""
    out = []
    for c in cols:
        ns = list(dict.fromkeys(r[c].n for _, r in rows if c in r and r[c].n is not None))
        out.append("/".join(str(n) for n in ns) or "-")
    return out


def md_table(rows: Sequence[tuple[str, Mapping[str, Cell]]], cols: Sequence[str], headers: Sequence[str] | None = None,
             first: str = "Model") -> str:
    """A markdown table of accuracies in percent with their intervals, ± std where k > 1, and a row of n."""
    with_std = any(c.std >= 5e-5 for _, r in rows for c in r.values())
    lines = ["| " + " | ".join([first, *(headers or cols)]) + " |", "|" + "---|" * (len(cols) + 1)]
    n_row = _n_row(rows, cols)
    if any(n != "-" for n in n_row):
        lines.append("| " + " | ".join(["n (questions)", *n_row]) + " |")
    for label, r in rows:
        lines.append("| " + " | ".join([label, *(_pct(r.get(c), with_std, with_ci=True) for c in cols)]) + " |")
    return "\n".join(lines)


def _p_value(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def _diff_text(d: Diff | None) -> str:
    if d is None:
        return "-"
    ci = f" [{100 * d.ci_low:+.1f}, {100 * d.ci_high:+.1f}]" if d.ci_low is not None and d.ci_high is not None else ""
    label = {"perm": "perm ", "pooled": "pooled "}.get(d.test, "")
    return f"{100 * d.diff:+.2f}{ci} {label}{_p_value(d.p)}"


def diff_table(rows: Sequence[tuple[str, Mapping[str, Diff]]], cols: Sequence[str], headers: Sequence[str]) -> str:
    """A markdown table of paired differences in points with their bootstrap interval and McNemar p-value."""
    lines = ["| " + " | ".join(["Comparison", *headers]) + " |", "|" + "---|" * (len(cols) + 1)]
    lines += ["| " + " | ".join([label, *(_diff_text(r.get(c)) for c in cols)]) + " |" for label, r in rows]
    return "\n".join(lines)


def _diff_rows(runs: Sequence[PipelineRun], kind: str, reference: str = "base") -> list[tuple[str, dict[str, Diff]]]:
    rows = []
    for r in runs:
        for c in r.checkpoints:
            d = r.differences(c, kind, reference) if c != reference else {}
            if d:
                rows.append((f"{r.label} · {c} − {reference}", d))
    return rows


def _bench_cols(rows: Sequence[tuple[str, Mapping[str, Any]]]) -> list[str]:
    cols: list[str] = []
    for _, r in rows:
        cols += [b for b in r if b != "avg" and not is_rare_benchmark(b) and b not in cols]
    return cols + (["avg"] if any("avg" in r for _, r in rows) else [])


def _bench_headers(cols: Sequence[str]) -> list[str]:
    return ["Avg" if c == "avg" else c for c in cols]


def _cat_cols(rows: Sequence[tuple[str, Mapping[str, Any]]]) -> list[str]:
    present = {k for _, r in rows for k in r}
    order = [category_key(c) for c in TABLE1_ORDER] + [category_key(c) for c in CATEGORIES if c not in TABLE1_ORDER]
    cols = [c for c in order if c in present] + sorted(k for k in present if k not in order and k != "avg")
    return cols + (["avg"] if "avg" in present else [])


_CAT_HEADERS = {category_key(c): ("RDs" if c == "Related disorders" else c) for c in CATEGORIES} | {"avg": "Avg"}


def _checkpoint_rows(runs: Sequence[PipelineRun], kind: str) -> list[tuple[str, dict[str, Cell]]]:
    rows = []
    for r in runs:
        for c in r.checkpoints:
            cells = r.benchmarks(c) if kind == "bench" else r.categories(c)
            if cells:
                rows.append((f"{r.label} · {c}", cells))
    return rows


def _mean_cells(cells: Sequence[Mapping[str, Cell]]) -> dict[str, Cell]:
    """Mean over runs of the same setting: with several, the sample std across those runs and no interval (a pipeline
    run's interval is over its questions, not over training runs); with one, its cell as logged."""
    out = {}
    for k in dict.fromkeys(k for c in cells for k in c):
        vals = [c[k] for c in cells if k in c]
        if len(vals) == 1:
            out[k] = vals[0]
            continue
        m = sum(v.acc for v in vals) / len(vals)
        sd = (sum((v.acc - m) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5
        ns = {v.n for v in vals}
        out[k] = Cell(m, sd, n=ns.pop() if len(ns) == 1 else None)
    return out


Setting = tuple[str, float]  # PipelineRun.setting: ("target", share) or ("α", ratio)


def sweep_groups(runs: Sequence[PipelineRun]) -> dict[str, dict[Setting, list[PipelineRun]]]:
    """{strategy: {setting: runs}} for the strategies evaluated at two or more settings (α, or target rare share)."""
    groups: dict[str, dict[Setting, list[PipelineRun]]] = {}
    for r in runs:
        if r.evaluated and r.setting is not None:
            groups.setdefault(r.strategy, {}).setdefault(r.setting, []).append(r)
    return {s: dict(sorted(g.items())) for s, g in groups.items() if len(g) >= 2}


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def measured_share(runs: Sequence[PipelineRun]) -> float | None:
    """Mean measured rare-disease share of a setting's runs (None when none logged it: runs from before #22.5)."""
    return _mean([r.rare_share_measured for r in runs])


def setting_label(setting: Setting, runs: Sequence[PipelineRun]) -> str:
    """``α=25% · measured 34.8%`` or ``target 25% · measured 25.0% · α 0.16``: what was asked and what the set holds."""
    kind, value = setting
    label = f"target {100 * value:g}%" if kind == "target" else f"α={100 * value:g}%"
    m = measured_share(runs)
    if m is not None:
        label += f" · measured {100 * m:.1f}%"
    if kind == "target" and (a := _mean([r.metrics.get("synth/alpha_used") for r in runs])) is not None:
        label += f" · α {a:.2f}"
    return label


def strategy_rows(runs: Sequence[PipelineRun]) -> list[tuple[str, dict[str, Cell]]]:
    """Table 3: per strategy (and α when runs differ in it), stage I (the stage1 checkpoint) and stage II (the final one),
    averaged over its runs; a stage the strategy passes through untrained gets no row of its own."""
    ev = [r for r in runs if r.evaluated]
    mixed = len({r.setting for r in ev}) > 1  # keep settings apart: never average runs of different α or target share
    by: dict[tuple[str, str], list[PipelineRun]] = {}
    for r in ev:
        by.setdefault((r.strategy, f" ({_short(r.setting)})" if mixed and r.setting is not None else ""), []).append(r)
    rows = []
    for (name, alpha), rs in sorted(by.items()):
        strat = name + alpha
        stage1 = [r.benchmarks("stage1") for r in rs if "stage1" in r.checkpoints and r.benchmarks("stage1")]
        if stage1 and rs[-1].final != "stage1" and _trained(name, "stage1") and _trained(name, "stage2"):
            rows.append((f"{strat} · stage I", _mean_cells(stage1)))
            rows.append((f"{strat} · stage II", _mean_cells([r.benchmarks(r.final) for r in rs])))
        else:
            rows.append((strat, _mean_cells([r.benchmarks(r.final) for r in rs])))
    return rows


def _short(setting: Setting) -> str:
    """``α=0.25`` or ``target 25%``."""
    return f"target {100 * setting[1]:g}%" if setting[0] == "target" else f"α={setting[1]:g}"


def _trained(strategy: str, stage: str) -> bool:
    """False when the strategy passes the stage through untrained (supervised: stage1; one_stage: stage2)."""
    from medssr.rl.strategies import plan

    try:
        return plan(strategy)[stage].data is not None
    except Exception:  # an unknown strategy name from an older run: show both stages
        return True


def _review_section(reviews: Sequence[Any]) -> str:
    if not reviews:
        return "No physician review imported yet: `medssr review export --n 200`, fill the sheet, then `medssr review import FILE...`."
    m = reviews[0].data.metrics
    groups = [g for g in ("senior", "junior", "overall") if f"review/{g}/n_questions" in m]
    lines = ["| Group | # Questions | Incorrect | Harmful | Plausibility (SD) |", "|---|---|---|---|---|"]
    for g in groups:
        nq = int(m[f"review/{g}/n_questions"])
        lines.append(f"| {g.capitalize()} | {nq} | {int(m.get(f'review/{g}/n_incorrect', 0))}/{nq} ({m[f'review/{g}/incorrect_pct']:.2f}%) | "
                     f"{int(m.get(f'review/{g}/n_harmful', 0))}/{nq} ({m[f'review/{g}/harmful_pct']:.2f}%) | "
                     f"{m[f'review/{g}/plausibility_mean']:.2f}/5 ({m[f'review/{g}/plausibility_sd']:.2f}) |")
    return f"Latest review run `{reviews[0].info.run_id[:8]}` ({len(reviews)} in total).\n\n" + "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    """Lay out, write atomically and close a figure; the format comes from ``path``'s suffix (the temp name has none)."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=Path(path).suffix.lstrip(".") or "png")
    _plt().close(fig)
    return path


def _with_n(rows: Sequence[tuple[str, Mapping[str, Cell]]], cols: Sequence[str], headers: Sequence[str]) -> list[str]:
    """Column labels with the question count under them (n of the first row that has one; '?' when rows disagree)."""
    out = []
    for c, h in zip(cols, headers, strict=True):
        ns = {r[c].n for _, r in rows if c in r and r[c].n is not None}
        out.append(f"{h}\nn={ns.pop()}" if len(ns) == 1 else (f"{h}\nn=?" if ns else h))
    return out


def bar_figure(rows: Sequence[tuple[str, Mapping[str, Cell]]], cols: Sequence[str], headers: Sequence[str], title: str, path: Path,
               xlabel: str = "benchmark") -> Path:
    """Grouped bars: one group per column (with its n), one bar per row (accuracy %), the value on each bar so a zero
    is visible; error bars are the logged interval (Wilson, or bootstrap for averages), else ± std."""
    plt = _plt()
    rows = list(rows)[-MAX_FIG_ROWS:]
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(max(7.0, 1.25 * len(cols) + 3), 4.6))
    for i, (label, r) in enumerate(rows):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(cols))]
        ys = [100 * r[c].acc if c in r else float("nan") for c in cols]
        err = [_err(r.get(c)) for c in cols]
        yerr = [[100 * lo for lo, _ in err], [100 * hi for _, hi in err]]
        bars = ax.bar(xs, ys, width, yerr=yerr if any(map(any, yerr)) else None, label=label, capsize=2, edgecolor="black",
                      linewidth=0.4)
        for b, y in zip(bars, ys, strict=True):
            if y == y:  # not nan
                ax.annotate(f"{y:.0f}", (b.get_x() + b.get_width() / 2, y), xytext=(0, 1), textcoords="offset points",
                            ha="center", va="bottom", fontsize=5)
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(_with_n(rows, cols, headers), rotation=0, fontsize=7)
    ax.set_ylabel("accuracy (%)")
    ax.set_xlabel(f"{xlabel} (n = questions evaluated)")
    ax.set_ylim(0, min(105, max([100 * (r[c].ci_high or r[c].acc) for _, r in rows for c in cols if c in r] + [10]) + 8))
    ax.set_title(f"{title}\n(error bars: {100 * _LEVEL:g}% interval over questions)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


_LEVEL = 0.95  # the interval level shown in figure titles (eval.confidence's default)


def _err(c: Cell | None) -> tuple[float, float]:
    """(below, above) the bar: distance to the interval's ends, or ± std when no interval was logged."""
    if c is None:
        return 0.0, 0.0
    if c.ci_low is not None and c.ci_high is not None:
        return max(0.0, c.acc - c.ci_low), max(0.0, c.ci_high - c.acc)
    return c.std, c.std


def sweep_points(g: Mapping[Setting, Sequence[PipelineRun]]) -> list[tuple[float, Setting, bool]]:
    """Fig. 4's x of each setting, in percent, sorted: the measured rare share of its synthetic set (the paper's ratio;
    α and the target are annotations), or, for runs that logged none, the asked value (flagged False)."""
    pts = []
    for setting, runs in g.items():
        m = measured_share(runs)
        pts.append((100 * (m if m is not None else setting[1]), setting, m is not None))
    return sorted(pts)


def sweep_figure(groups: Mapping[str, Mapping[Setting, Sequence[PipelineRun]]], path: Path) -> Path:
    """Fig. 4: final-checkpoint accuracy against the measured rare-disease share of the synthetic set, general
    benchmarks (avg) and RareDis-Sub (avg over categories) on one shared y axis, each point annotated with its α (or
    target share), with the interval of each point (one run: its interval over questions; several runs of one
    setting: ± std across them) and the base model as a dashed line."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    ns: dict[str, set[int]] = {"bench": set(), "cat": set()}
    unmeasured = False
    for strat, g in groups.items():
        order = sweep_points(g)
        unmeasured |= not all(ok for _, _, ok in order)
        xs = [setting for _, setting, _ in order]
        for ax, kind in zip(axes, ("bench", "cat"), strict=True):
            cells = [_mean_cells([r.part(r.final, kind) for r in g[x]]).get("avg") for x in xs]
            pts = [(px, c, x) for (px, _, _), x, c in zip(order, xs, cells, strict=True) if c is not None]
            if not pts:
                continue
            ns[kind] |= {c.n for _, c, _ in pts if c.n is not None}
            err = [_err(c) for _, c, _ in pts]
            ax.errorbar([x for x, _, _ in pts], [100 * c.acc for _, c, _ in pts],
                        yerr=[[100 * lo for lo, _ in err], [100 * hi for _, hi in err]], marker="o", capsize=3,
                        label=f"{strat} (final checkpoint)")
            for px, c, x in pts:
                a = _mean([r.metrics.get("synth/alpha_used") for r in g[x]]) if x[0] == "target" else None
                ax.annotate(_short(x) + ("" if a is None else f", α {a:.2f}"), (px, 100 * c.acc), xytext=(3, 4), textcoords="offset points", fontsize=6)
            bases = [r.part("base", kind).get("avg") for x in xs for r in g[x] if "base" in r.checkpoints]
            bases = [b.acc for b in bases if b is not None]
            if bases:
                ax.axhline(100 * sum(bases) / len(bases), color="gray", linestyle="--", linewidth=1, label=f"{strat}: base model")
    titles = {"bench": "General benchmarks (avg)", "cat": "RareDis-Sub (avg over categories)"}
    for ax, kind in zip(axes, ("bench", "cat"), strict=True):
        n = ns[kind]
        ax.set_title(titles[kind] + (f", n={n.pop()} questions per run" if len(n) == 1 else ""), fontsize=9)
        ax.set_xlabel("measured rare-disease share of the synthetic set (%)" + ("; α where none was logged" if unmeasured else ""))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    axes[0].set_ylabel("accuracy (%)")
    fig.suptitle(f"Accuracy vs rare-disease share (Fig. 4; points: their α or target); error bars: {100 * _LEVEL:g}% interval "
                 "over questions, or ± std over runs", fontsize=10)
    return _save(fig, path)


# Fig. 6 panels: (series name, panel title, y label)
CURVE_PANELS = (("heldout_acc", "held-out accuracy (greedy F.4, fixed benchmark questions)", "accuracy"),
                ("reward_mean", "mean reward (stage I: vs the voted label; stage II: vs gold)", "reward"),
                ("accuracy", "accuracy of rollouts vs gold", "accuracy"),
                ("kl", "KL to the reference policy", "KL"), ("distinct_answers", "distinct answers per group (collapse signal)",
                                                             "distinct answers"),
                ("zero_std_group_share", "groups with one reward for all G (no gradient)", "share of groups"))


def _series(r: PipelineRun, name: str) -> list[tuple[str, list[tuple[int, float]]]]:
    """(stage, history) of one per-step series ``train/<stage>/<name>`` of a run, stages in order."""
    return [(k.split("/")[1], h) for k, h in sorted(r.histories.items()) if h and re.fullmatch(rf"train/[^/]+/{name}", k)]


def curves_figure(runs: Sequence[PipelineRun], path: Path) -> Path | None:
    """Fig. 6: per training step, held-out accuracy (the performance panel), mean reward, rollout accuracy, KL, distinct
    answers and zero-variance groups side by side; one line per run and stage, labelled by run, stage, strategy and α;
    a panel with no logged series says so."""
    if not any(_series(r, name) for r in runs for name, _, _ in CURVE_PANELS):
        return None
    plt = _plt()
    fig, axes = plt.subplots(2, 3, figsize=(15, 7))
    styles = ("-", "--", ":", "-.")
    for ax, (name, title, ylabel) in zip(axes.flat, CURVE_PANELS, strict=True):
        for i, r in enumerate(runs):
            alpha = f", α={r.rare_ratio:g}" if r.rare_ratio is not None else ""
            for j, (stage, h) in enumerate(_series(r, name)):  # a colour per run and stage, a line style per stage
                ax.plot([s for s, _ in h], [v for _, v in h], marker="o" if j == 0 else "s", markersize=3,
                        linestyle=styles[j % len(styles)], color=f"C{(2 * i + j) % 10}", label=f"{r.label} · {stage} ({r.strategy}{alpha})")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training step")
        ax.xaxis.get_major_locator().set_params(integer=True)  # steps are whole numbers
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=6)
        else:
            ax.text(0.5, 0.5, f"no train/<stage>/{name} logged", ha="center", va="center", transform=ax.transAxes, fontsize=8)
    fig.suptitle("Training curves (Fig. 6 style)", fontsize=10)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------------------


def build_report(runs: Sequence[PipelineRun], reviews: Sequence[Any], out_dir: str | os.PathLike, experiment: str) -> tuple[str, list[Path]]:
    """The markdown text and the figures written next to it."""
    out = Path(out_dir)
    fig_dir = out / FIG_DIR
    fig_dir.mkdir(parents=True, exist_ok=True)
    for name in FIGURES:  # a figure of a section that has no data any more must not linger
        (fig_dir / name).unlink(missing_ok=True)
    figs: list[Path] = []
    ev = [r for r in runs if r.evaluated]
    md = [f"# MedSSR report — experiment `{experiment}`", "",
          f"{len(runs)} pipeline run(s), {len(ev)} evaluated. Accuracy in percent with its interval over the questions in "
          "brackets (Wilson per benchmark and category; for averages a bootstrap over questions within each part; level "
          "`eval.confidence`) and ± the run-to-run std over the k evaluation runs where k > 1 (decoding variance, population "
          "std as in the paper's Table 9; across pipeline runs when a row averages several). The n row counts questions. "
          "Rows are `<run> · <checkpoint>`; the last checkpoint of a run is its final model.", ""]

    md += ["## Runs", ""]
    if runs:
        md += ["| Run | Strategy | Rare ratio α | Rare share: target → measured | Policy | Checkpoints | Avg | RareDis avg | "
               "Invalid before → after |", "|---|---|---|---|---|---|---|---|---|"]
        for r in runs:
            b, c = r.benchmarks(r.final).get("avg"), r.categories(r.final).get("avg")
            inv = (f"{100 * r.metrics['eval/invalid_before']:.1f}% → {100 * r.metrics.get('eval/invalid_after', 0):.1f}%"
                   if "eval/invalid_before" in r.metrics else "-")
            t, m = r.rare_share_target, r.rare_share_measured
            share = f"{'-' if t is None else f'{100 * t:g}%'} → {'-' if m is None else f'{100 * m:.1f}%'}"
            md.append(f"| {r.label} | {r.strategy} | {r.params.get('synth.rare_ratio', '-')} | {share} | {r.params.get('model.policy', '-')} | "
                      f"{', '.join(r.checkpoints) if r.evaluated else '-'} | {_pct(b, False)} | {_pct(c, False)} | {inv} |")
    else:
        md.append("No pipeline runs in this experiment yet: run `dvc repro` (or `dvc exp run`) first.")
    md.append("")

    rows2 = _checkpoint_rows(ev, "bench")
    md += ["## General medical benchmarks (Table 2 style)", ""]
    if rows2:
        cols = _bench_cols(rows2)
        md += [md_table(rows2, cols, _bench_headers(cols)), ""]
        figs.append(bar_figure(_fig_rows(ev, "bench"), cols, _bench_headers(cols), "General medical benchmarks",
                               fig_dir / "table2_benchmarks.png"))
        md += [f"![benchmarks]({FIG_DIR}/{figs[-1].name})", ""]
    else:
        md += ["No evaluation results yet.", ""]

    rows1 = _checkpoint_rows(ev, "cat")
    md += ["## RareDis-Sub by category (Table 1 style)", ""]
    if rows1:
        cols = _cat_cols(rows1)
        heads = [_CAT_HEADERS.get(c, c) for c in cols]
        counts = {}
        for k, v in ev[-1].metrics.items():
            m = re.fullmatch(r"eval/raredis/([^/]+)/n", k)
            if m:
                counts[m.group(1)] = int(v)
        md += [md_table(rows1, cols, heads), ""]
        if counts:
            md += ["Questions per category (latest run): " + ", ".join(f"{_CAT_HEADERS.get(k, k)} {counts[k]}" for k in cols if k in counts), ""]
        figs.append(bar_figure(_fig_rows(ev, "cat"), cols, heads, "RareDis-Sub by category", fig_dir / "table1_raredis.png",
                               xlabel="rare-disease question category"))
        md += [f"![raredis]({FIG_DIR}/{figs[-1].name})", ""]
    else:
        md += ["No RareDis-Sub results yet (declare `raredis_sub` under eval.benchmarks).", ""]

    md += ["## Paired differences to base", ""]
    d_bench, d_cat = _diff_rows(ev, "bench"), _diff_rows(ev, "cat")
    if d_bench or d_cat:
        md += ["Checkpoint minus base on the same questions, in points: [paired bootstrap interval, questions resampled and "
               "runs nested] and the exact McNemar p-value on the questions only one of the two gets right (by majority over "
               "runs when k > 1). Avg columns: \"perm p\" is the paired permutation test of the macro difference (each "
               "question's two answers swapped at random within its benchmark or category); \"pooled p\" (runs logged before "
               "it) is the McNemar test of the pooled questions, which weighs questions, not benchmarks.", ""]
        if d_bench:
            cols = _bench_cols(d_bench)
            md += [diff_table(d_bench, cols, _bench_headers(cols)), ""]
        if d_cat:
            cols = _cat_cols(d_cat)
            md += ["RareDis-Sub by category:", "", diff_table(d_cat, cols, [_CAT_HEADERS.get(c, c) for c in cols]), ""]
    else:
        md += ["No paired differences logged yet: evaluate `base` together with a trained checkpoint.", ""]

    md += ["## Rare-disease ratio sweep (Fig. 4, Tables 10-11 style)", ""]
    groups = sweep_groups(ev)
    if groups:
        figs.append(sweep_figure(groups, fig_dir / "fig4_rare_ratio.png"))
        md += [f"![rare ratio sweep]({FIG_DIR}/{figs[-1].name})", ""]
        md += ["x = the measured rare-disease share of each setting's synthetic set (questions the benchmark tagger flags, "
               "the paper's ratio of §4.2-4.3), not α: α = 0 already gives the natural share (13 % in the paper).", ""]
        for strat, g in groups.items():
            order = [setting for _, setting, _ in sweep_points(g)]
            b_rows = [(setting_label(x, g[x]), _mean_cells([r.benchmarks(r.final) for r in g[x]])) for x in order]
            c_rows = [(setting_label(x, g[x]), _mean_cells([r.categories(r.final) for r in g[x]])) for x in order]
            md += [f"Strategy `{strat}`, general benchmarks:", "", md_table(b_rows, _bench_cols(b_rows), _bench_headers(_bench_cols(b_rows)), "Setting"), ""]
            if any(c for _, c in c_rows):
                cols = _cat_cols(c_rows)
                md += ["RareDis-Sub:", "", md_table(c_rows, cols, [_CAT_HEADERS.get(c, c) for c in cols], "Setting"), ""]
    else:
        md += ["No sweep runs yet: evaluated runs differ in `synth.rare_share_target` (or `synth.rare_ratio`) fewer than twice. "
               "Queue the paper's settings with `dvc exp run --queue -S synth.rare_share_target=0,0.13,0.25,0.33,0.5 && dvc queue start`.", ""]

    md += ["## Training strategies (Table 3 style)", ""]
    strategies = {r.strategy for r in ev}
    if len(strategies) >= 2:
        rows3 = strategy_rows(ev)
        cols = _bench_cols(rows3)
        md += [md_table(rows3, cols, _bench_headers(cols), "Strategy"), ""]
    else:
        md += [f"Only one training strategy evaluated so far ({', '.join(sorted(strategies)) or 'none'}); set `train.strategy` "
               "to two_stage, supervised, one_stage, reverse or online_vote in further runs to compare.", ""]

    md += ["## Training curves (Fig. 6 style)", ""]
    fig6 = curves_figure(runs, fig_dir / "fig6_training.png")
    if fig6:
        figs.append(fig6)
        md += [f"![training curves]({FIG_DIR}/{fig6.name})", ""]
        md += ["| Run | Series | Steps | First | Last |", "|---|---|---|---|---|"]
        for r in runs:
            for k, h in sorted(r.histories.items()):
                if h and k.rsplit("/", 1)[-1] in CURVE_KEYS:
                    md.append(f"| {r.label} | `{k}` | {len(h)} | {h[0][1]:.4g} | {h[-1][1]:.4g} |")
        md.append("")
    else:
        md += ["No training metrics logged yet (`train/<stage>/reward_mean` ...).", ""]

    md += ["## Physician review (Table 4 style)", "", _review_section(reviews), ""]
    return "\n".join(md), figs


def _fig_rows(ev: Sequence[PipelineRun], kind: str) -> list[tuple[str, dict[str, Cell]]]:
    """Figure rows: the final checkpoint of earlier runs (oldest first), then every checkpoint of the latest run
    (base, stage1, stage2 ...) so the figure shows what each training stage changed."""
    if not ev:
        return []
    def setting(r: PipelineRun) -> str:
        return f" ({r.strategy}" + (f", {_short(r.setting)})" if r.setting is not None else ")")

    latest = [(f"{ev[-1].label} · {c}" + ("" if c == "base" else setting(ev[-1])), cells)
              for c in ev[-1].checkpoints if (cells := ev[-1].part(c, kind))]
    earlier = [(f"{r.label} · {r.final}{setting(r)}", cells) for r in ev[:-1] if (cells := r.part(r.final, kind))]
    return earlier[-max(0, MAX_FIG_ROWS - len(latest)):] + latest if len(latest) < MAX_FIG_ROWS else latest[-MAX_FIG_ROWS:]


def main_report(out_dir: str | os.PathLike, experiment: str | None = None) -> int:
    """`medssr report`: write <out_dir>/report.md and its PNG figures from the experiment's MLflow runs."""
    set_offline_env()
    experiment = experiment or _experiment_from_params()
    runs, reviews = collect_runs(experiment)
    text, figs = build_report(runs, reviews, out_dir, experiment)
    path = Path(out_dir) / "report.md"
    write_text_atomic(path, text)
    print(f"[report] {path}: {len(runs)} pipeline run(s), {sum(r.evaluated for r in runs)} evaluated, {len(figs)} figure(s)")
    return 0
