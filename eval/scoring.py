"""Pure scoring: accuracy with a Wilson interval and n, decoding std over k runs, categories, averages, paired tests.

Accuracies are fractions in [0, 1] everywhere (JSON, MLflow); only printed tables show percent. The statistics are
defined in eval/stats.py: a Wilson interval over the n questions, the population std of per-run accuracies (the
paper's Table 9, decoding variance), and against the reference checkpoint (``base``) the paired difference with a
nested bootstrap interval and an exact McNemar p-value. The average is macro over the main benchmarks (paper
Table 2); rare-disease sets (names starting ``raredis``) are left out of it and reported by category, with their own
macro average over categories (paper Table 1 "Avg"). A macro average's interval is a bootstrap over questions within
each benchmark (or category), so each keeps its size. An average's difference is macro too, so its p is the paired
permutation test of that macro difference (``p_perm_macro``); the McNemar test of its pooled discordant questions is
kept beside it as ``p_mcnemar_pooled`` (it weighs questions, not benchmarks, and can disagree with the macro diff).

metrics/eval.json, per checkpoint, in this order (every value a number, for ``dvc metrics show``):
``<benchmark>: {acc, ci_low, ci_high, n, run_std, invalid_before, invalid_after, echo_rate}``, ``avg``, ``avg_ci_low``,
``avg_ci_high``, ``avg_run_std``, ``avg_n`` (questions), ``n_benchmarks``, ``raredis: {<category>: {acc, ci_low, ci_high,
n, run_std}, avg, avg_ci_low, avg_ci_high, avg_run_std, avg_n}``, ``invalid_before``, ``invalid_after``, ``n_runs``,
``ci_level``, and for every checkpoint but the reference ``vs_base: {<benchmark>: {diff, ci_low, ci_high, n, b, c, p_mcnemar},
avg: {diff, ci_low, ci_high, n, b, c, p_perm_macro, p_mcnemar_pooled}, raredis: {<category>: {... p_mcnemar}, avg: {...
p_perm_macro, p_mcnemar_pooled}}}`` (``ci_*`` are absent when eval.bootstrap is 0, as are ``avg_ci_*``; the permutation
p does not depend on eval.bootstrap).

MLflow names are those keys joined by ``/`` under ``eval`` (final checkpoint) or ``eval/<checkpoint>`` (the others):
``eval/medqa/acc``, ``eval/medqa/ci_low``, ``eval/medqa/run_std``, ``eval/avg``, ``eval/avg_ci_low``,
``eval/n_benchmarks``, ``eval/raredis/symptoms/acc``, ``eval/raredis/avg``, ``eval/base/medqa/acc``,
``eval/vs_base/medqa/diff``, ``eval/vs_base/medqa/p_mcnemar``, ``eval/stage1/vs_base/avg/ci_high``,
``eval/vs_base/avg/p_perm_macro``, ``eval/vs_base/raredis/avg/p_mcnemar_pooled``, ``eval/vs_base/raredis/treatment/b`` ...
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from eval.stats import (
    PERM_DRAWS,
    PERM_EXACT_MAX,
    bootstrap_interval,
    decoding_std,
    discordant,
    mcnemar_exact,
    permutation_p,
    stable_seed,
    wilson_interval,
)
from medssr.metric_names import category_key, eval_prefix, flatten
from medssr.records import CATEGORIES

RARE_PREFIX = "raredis"
PRIMARY_RARE = "raredis_sub"
REFERENCE = "base"


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
    second_pass_reason: str | None = None  # why the constrained pass ran: 'no_answer' | 'echo' (None: it answered)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Score:
    acc: float  # mean over runs
    run_std: float  # population std of the per-run accuracies (decoding variance, paper Table 9)
    n: int  # questions
    ci_low: float  # Wilson interval over the n questions
    ci_high: float
    runs: list[float] = field(default_factory=list)
    ids: list[str] = field(default_factory=list, repr=False)  # question ids, the rows of ``correct``
    correct: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)  # questions x runs, 0/1


@dataclass
class BenchmarkScore(Score):
    invalid_before: float = 0.0  # share of outputs with no valid letter before the constrained pass
    invalid_after: float = 0.0  # ... and after it
    echo_rate: float = 0.0  # share of outputs that only echoed the options (second_pass_reason 'echo')
    categories: dict[str, Score] = field(default_factory=dict)


@dataclass
class Average:
    """A macro average over benchmarks (or categories); its interval is None when the bootstrap is off."""

    acc: float
    run_std: float
    n: int  # questions over all averaged parts
    parts: int  # how many benchmarks (categories) were averaged
    ci_low: float | None = None
    ci_high: float | None = None


@dataclass
class CheckpointScore:
    benchmarks: dict[str, BenchmarkScore]
    avg: Average | None  # macro over main benchmarks
    raredis: dict[str, Score]  # categories of the primary rare-disease set, in paper order
    raredis_avg: Average | None  # macro over those categories
    invalid_before: float
    invalid_after: float
    n_runs: int = 1
    confidence: float = 0.95
    avg_of: list[str] = field(default_factory=list)  # the benchmarks in ``avg``


@dataclass
class Comparison:
    """A checkpoint minus the reference on the questions (and runs) both answered.

    For one benchmark (category) ``p_mcnemar`` is the row's test. For an average (``p_perm_macro`` set) ``diff`` is
    the macro difference and ``p_perm_macro`` its test; ``b``, ``c`` and ``p_mcnemar`` then pool the parts' questions
    (eval.json calls that p ``p_mcnemar_pooled``: it answers whether more questions were won, not the macro diff).
    """

    diff: float
    n: int
    b: int  # questions only this checkpoint gets right (majority over runs)
    c: int  # questions only the reference gets right
    p_mcnemar: float  # exact McNemar on the b + c discordant questions (pooled over the parts of an average)
    ci_low: float | None = None  # paired nested bootstrap interval of ``diff``
    ci_high: float | None = None
    p_perm_macro: float | None = None  # averages only: paired permutation p of the macro ``diff`` (eval.stats.permutation_p)


def is_rare_benchmark(name: str) -> bool:
    return name.lower().startswith(RARE_PREFIX)


def accuracy(correct: Sequence[bool]) -> float:
    if not correct:
        raise ValueError("accuracy of no answers is undefined")
    return sum(bool(c) for c in correct) / len(correct)


def invalid_rate(letters: Sequence[str | None]) -> float:
    """Share of answers that are None (no valid option letter)."""
    if not letters:
        return 0.0
    return sum(x is None for x in letters) / len(letters)


def echo_rate(preds: Sequence[Prediction]) -> float:
    """Share of outputs that restated the options instead of answering (a failure the invalid rate does not separate)."""
    return sum(p.second_pass_reason == "echo" for p in preds) / len(preds) if preds else 0.0


def correct_matrix(preds: Sequence[Prediction]) -> tuple[list[str], list[int], np.ndarray]:
    """Question ids (first-seen order), run numbers (sorted) and the questions x runs 0/1 matrix; every cell must exist."""
    if not preds:
        raise ValueError("no predictions to score")
    ids = list(dict.fromkeys(p.id for p in preds))
    runs = sorted({p.run for p in preds})
    row, col = {q: i for i, q in enumerate(ids)}, {r: j for j, r in enumerate(runs)}
    m = np.full((len(ids), len(runs)), -1.0)
    for p in preds:
        i, j = row[p.id], col[p.run]
        if m[i, j] >= 0:
            raise ValueError(f"{p.benchmark}: question {p.id!r} has two predictions for run {p.run}")
        m[i, j] = float(bool(p.correct))
    if (m < 0).any():
        i, j = (int(x[0]) for x in np.nonzero(m < 0))
        raise ValueError(f"{preds[0].benchmark}: question {ids[i]!r} has no prediction for run {runs[j]} (runs must be complete)")
    return ids, runs, m


def score_runs(preds: Sequence[Prediction], confidence: float = 0.95) -> Score:
    """Accuracy of each run, their mean and decoding std, and the Wilson interval over the n distinct questions."""
    ids, _, m = correct_matrix(preds)
    runs = [float(x) for x in m.mean(axis=0)]
    acc = float(m.mean())
    low, high = wilson_interval(float(m.sum()) / m.shape[1], len(ids), confidence)  # run-mean successes, exact when all right
    return Score(acc=acc, run_std=decoding_std(runs), n=len(ids), ci_low=low, ci_high=high, runs=runs, ids=ids, correct=m)


def score_categories(preds: Sequence[Prediction], confidence: float = 0.95) -> dict[str, Score]:
    """Per-category scores in paper order (categories with no question are absent; unknown ones come last)."""
    groups: dict[str, list[Prediction]] = {}
    for p in preds:
        if p.category:
            groups.setdefault(p.category, []).append(p)
    order = [c for c in CATEGORIES if c in groups] + sorted(c for c in groups if c not in CATEGORIES)
    return {c: score_runs(groups[c], confidence) for c in order}


def score_benchmark(preds: Sequence[Prediction], confidence: float = 0.95) -> BenchmarkScore:
    s = score_runs(preds, confidence)
    return BenchmarkScore(**{f.name: getattr(s, f.name) for f in fields(Score)},
                          invalid_before=invalid_rate([p.extracted for p in preds]),
                          invalid_after=invalid_rate([p.final for p in preds]), echo_rate=echo_rate(preds),
                          categories=score_categories(preds, confidence))


def average(scores: Sequence[Score], n_boot: int = 0, confidence: float = 0.95,
            seed: int | np.random.SeedSequence = 0) -> Average | None:
    """Macro average, the decoding std of per-run macro averages (runs every part has) and a stratified bootstrap interval."""
    if not scores:
        return None
    k = min(len(s.runs) for s in scores)
    per_run = [sum(s.runs[r] for s in scores) / len(scores) for r in range(k)]
    out = Average(acc=sum(s.acc for s in scores) / len(scores), run_std=decoding_std(per_run),
                  n=sum(s.n for s in scores), parts=len(scores))
    if n_boot > 0:
        out.ci_low, out.ci_high = bootstrap_interval([s.correct for s in scores], n_boot, confidence, seed)
    return out


def primary_rare(names: Iterable[str]) -> str | None:
    """The rare-disease set whose categories feed ``eval/raredis/*``: ``raredis_sub`` if declared, else the first."""
    rare = [n for n in names if is_rare_benchmark(n)]
    return PRIMARY_RARE if PRIMARY_RARE in rare else (rare[0] if rare else None)


def score_checkpoint(preds: Sequence[Prediction], confidence: float = 0.95, n_boot: int = 0, seed: int = 0,
                     name: str = "", average_over: Collection[str] | None = None) -> CheckpointScore:
    """All scores of one checkpoint from its predictions (benchmarks in first-seen order); ``n_boot`` > 0 adds the
    averages' bootstrap intervals, seeded by ``seed`` and the checkpoint ``name``. The headline average is over
    ``average_over`` (e.g. the paper's nine) where evaluated, by default over every benchmark but the rare-disease sets."""
    by_bench: dict[str, list[Prediction]] = {}
    for p in preds:
        by_bench.setdefault(p.benchmark, []).append(p)
    benchmarks = {b: score_benchmark(ps, confidence) for b, ps in by_bench.items()}
    rare = primary_rare(benchmarks)
    cats = benchmarks[rare].categories if rare else {}
    main = [b for b in benchmarks if (b in average_over if average_over is not None else not is_rare_benchmark(b))]
    return CheckpointScore(benchmarks=benchmarks,
                           avg=average([benchmarks[b] for b in main], n_boot, confidence, stable_seed(seed, name, "avg")),
                           raredis=cats,
                           raredis_avg=average(list(cats.values()), n_boot, confidence, stable_seed(seed, name, "raredis/avg")),
                           invalid_before=invalid_rate([p.extracted for p in preds]),
                           invalid_after=invalid_rate([p.final for p in preds]),
                           n_runs=max((len(s.runs) for s in benchmarks.values()), default=1), confidence=confidence,
                           avg_of=main)


# --------------------------------------------------------------------------------------------------------------
# paired comparisons


def _aligned(ref: Score, other: Score) -> tuple[np.ndarray, np.ndarray]:
    """Both 0/1 matrices on the questions both answered (reference order) and the runs both have (the first k)."""
    row = {q: i for i, q in enumerate(other.ids)}
    common = [i for i, q in enumerate(ref.ids) if q in row]
    k = min(ref.correct.shape[1], other.correct.shape[1])
    return ref.correct[common, :k], other.correct[[row[ref.ids[i]] for i in common], :k]


def compare_scores(ref: Sequence[Score], other: Sequence[Score], n_boot: int = 0, confidence: float = 0.95,
                   seed: int | np.random.SeedSequence = 0, average: bool = False,
                   perm_seed: int | np.random.SeedSequence = 0) -> Comparison | None:
    """``other`` minus ``ref``, macro over paired parts (one part: a benchmark); McNemar pools the parts' questions.

    ``average``: the parts make a macro average, so add ``p_perm_macro``, the paired permutation test of the macro
    difference itself (answers swapped within each question, every part kept apart), seeded by ``perm_seed`` and
    computed whether or not the bootstrap (``n_boot``) runs.
    """
    pairs = [p for p in (_aligned(r, o) for r, o in zip(ref, other, strict=True)) if p[0].size]
    if not pairs:
        return None
    diffs = [o - r for r, o in pairs]
    b = c = 0
    for r, o in pairs:
        db, dc = discordant(r, o)
        b, c = b + db, c + dc
    out = Comparison(diff=float(np.mean([d.mean() for d in diffs])), n=sum(len(d) for d in diffs), b=b, c=c,
                     p_mcnemar=mcnemar_exact(b, c))
    if average:
        out.p_perm_macro = permutation_p(diffs, seed=perm_seed)
    if n_boot > 0:
        out.ci_low, out.ci_high = bootstrap_interval(diffs, n_boot, confidence, seed)
    return out


def compare_checkpoints(ref: CheckpointScore, other: CheckpointScore, n_boot: int = 0, confidence: float = 0.95,
                        seed: int = 0, name: str = "") -> dict[str, Any]:
    """{benchmark: Comparison, 'avg': Comparison, 'raredis': {category: Comparison, 'avg': Comparison}} on shared parts."""
    def cmp(key: str, r: Sequence[Score], o: Sequence[Score]) -> Comparison | None:
        return compare_scores(r, o, n_boot, confidence, stable_seed(seed, name, "vs", key), average=key in ("avg", "raredis/avg"),
                              perm_seed=stable_seed(seed, name, "perm", key))

    shared = [b for b in other.benchmarks if b in ref.benchmarks]
    out: dict[str, Any] = {b: cmp(b, [ref.benchmarks[b]], [other.benchmarks[b]]) for b in shared}
    main = [b for b in other.avg_of if b in ref.benchmarks]
    out["avg"] = cmp("avg", [ref.benchmarks[b] for b in main], [other.benchmarks[b] for b in main])
    cats = [c for c in other.raredis if c in ref.raredis]
    rare: dict[str, Any] = {category_key(c): cmp(f"raredis/{c}", [ref.raredis[c]], [other.raredis[c]]) for c in cats}
    rare["avg"] = cmp("raredis/avg", [ref.raredis[c] for c in cats], [other.raredis[c] for c in cats])
    out["raredis"] = {k: v for k, v in rare.items() if v is not None}
    return {k: v for k, v in out.items() if v}


def compare_to_reference(scores: Mapping[str, CheckpointScore], reference: str = REFERENCE, n_boot: int = 0,
                         confidence: float = 0.95, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Every checkpoint but the reference against it ({} when the reference was not evaluated)."""
    if reference not in scores:
        return {}
    return {name: compare_checkpoints(scores[reference], s, n_boot, confidence, seed, name)
            for name, s in scores.items() if name != reference}


# --------------------------------------------------------------------------------------------------------------
# metrics/eval.json and MLflow


def _r(x: float) -> float:
    return round(float(x), 6)


def _ci(low: float | None, high: float | None, prefix: str = "") -> dict[str, float]:
    return {} if low is None or high is None else {f"{prefix}ci_low": _r(low), f"{prefix}ci_high": _r(high)}


def score_json(s: Score) -> dict[str, Any]:
    """A benchmark's or category's eval.json entry (numbers only)."""
    return {"acc": _r(s.acc), **_ci(s.ci_low, s.ci_high), "n": s.n, "run_std": _r(s.run_std)}


def _average_json(a: Average) -> dict[str, Any]:
    """Flat ``avg*`` keys: ``avg`` stays a number, as `dvc metrics` and older readers expect."""
    return {"avg": _r(a.acc), **_ci(a.ci_low, a.ci_high, "avg_"), "avg_run_std": _r(a.run_std), "avg_n": a.n}


def _pv(p: float) -> float:
    return float(f"{p:.6g}")


def comparison_json(c: Comparison) -> dict[str, Any]:
    """A ``vs_base`` entry; p keeps six significant digits (a tiny p must not round to 0). An average's entry names
    its tests apart: ``p_perm_macro`` (of its macro ``diff``) and ``p_mcnemar_pooled`` (of its pooled ``b``, ``c``)."""
    out = {"diff": _r(c.diff), **_ci(c.ci_low, c.ci_high), "n": c.n, "b": c.b, "c": c.c}
    if c.p_perm_macro is not None:
        return out | {"p_perm_macro": _pv(c.p_perm_macro), "p_mcnemar_pooled": _pv(c.p_mcnemar)}
    return out | {"p_mcnemar": _pv(c.p_mcnemar)}


def checkpoint_json(score: CheckpointScore, comparison: Mapping[str, Any] | None = None,
                    reference: str = REFERENCE) -> dict[str, Any]:
    """The block of metrics/eval.json for one checkpoint (what `dvc metrics show/diff` reads); keys in a fixed order."""
    out: dict[str, Any] = {}
    for b, s in score.benchmarks.items():
        out[b] = score_json(s) | {"invalid_before": _r(s.invalid_before), "invalid_after": _r(s.invalid_after),
                                  "echo_rate": _r(s.echo_rate)}
    if score.avg is not None:
        out |= _average_json(score.avg) | {"n_benchmarks": score.avg.parts}
    if score.raredis:
        rd: dict[str, Any] = {category_key(c): score_json(s) for c, s in score.raredis.items()}
        if score.raredis_avg is not None:
            rd |= _average_json(score.raredis_avg)
        out["raredis"] = rd
    out |= {"invalid_before": _r(score.invalid_before), "invalid_after": _r(score.invalid_after),
            "n_runs": score.n_runs, "ci_level": score.confidence}
    if comparison:
        vs: dict[str, Any] = {k: comparison_json(v) for k, v in comparison.items() if isinstance(v, Comparison)}
        if comparison.get("raredis"):
            vs["raredis"] = {k: comparison_json(v) for k, v in comparison["raredis"].items()}
        out[f"vs_{reference}"] = vs
    return out


def results_json(preds_by_checkpoint: Mapping[str, Sequence[Prediction]], reference: str = REFERENCE, n_boot: int = 0,
                 confidence: float = 0.95, seed: int = 0, average_over: Collection[str] | None = None) -> dict[str, Any]:
    """The whole metrics/eval.json: every checkpoint scored, and each compared with ``reference`` on the same questions."""
    scores = {name: score_checkpoint(preds, confidence, n_boot, seed, name, average_over)
              for name, preds in preds_by_checkpoint.items()}
    comparisons = compare_to_reference(scores, reference, n_boot, confidence, seed)
    return {name: checkpoint_json(s, comparisons.get(name), reference) for name, s in scores.items()}


def checkpoint_metrics(score: CheckpointScore, prefix: str = "eval", comparison: Mapping[str, Any] | None = None,
                       reference: str = REFERENCE) -> dict[str, float]:
    """MLflow metric names and values of one checkpoint: its eval.json block under ``prefix`` (``metric_names.eval_prefix``)."""
    return flatten(checkpoint_json(score, comparison, reference), prefix)


def results_metrics(results: Mapping[str, Mapping[str, Any]], final: str | None = None) -> dict[str, float]:
    """MLflow metrics of a whole eval.json; ``final`` (default: the last checkpoint) is logged unprefixed."""
    final = final if final is not None else (list(results)[-1] if results else None)
    out: dict[str, float] = {}
    for name, block in results.items():
        out |= flatten(block, eval_prefix(name, name == final))
    return out


# --------------------------------------------------------------------------------------------------------------
# the printed table

_CATEGORY_NAMES = {category_key(c): c for c in CATEGORIES}


def _pct(x: float, signed: bool = False) -> str:
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def _acc_cell(d: Any, show_std: bool) -> str:
    """``25.0 [10.2, 49.5] ±1.3``: accuracy, interval (if any) and decoding std (k > 1)."""
    if not isinstance(d, Mapping) or d.get("acc") is None:
        return "-"
    s = _pct(d["acc"])
    if d.get("ci_low") is not None:
        s += f" [{_pct(d['ci_low'])}, {_pct(d['ci_high'])}]"
    std = d.get("run_std", d.get("std"))
    return s + (f" ±{_pct(std)}" if show_std and std is not None else "")


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def _diff_cell(d: Any, average: bool = False) -> str:
    """``+6.2 [-12.5, +25.0] p=0.727``: difference in points, paired bootstrap interval, exact McNemar p; an average's
    cell names its test, ``perm p=0.031`` (the permutation test of its macro difference; eval.json files from before it
    had only the pooled McNemar p, under ``p_mcnemar``, shown as ``pooled p=``)."""
    if not isinstance(d, Mapping) or d.get("diff") is None:
        return "-"
    s = _pct(d["diff"], signed=True)
    if d.get("ci_low") is not None:
        s += f" [{_pct(d['ci_low'], True)}, {_pct(d['ci_high'], True)}]"
    if d.get("p_perm_macro") is not None:
        return s + f" perm {_p(d['p_perm_macro'])}"
    pooled = d.get("p_mcnemar_pooled", d.get("p_mcnemar") if average else None)
    if pooled is not None:
        return s + f" pooled {_p(pooled)}"
    return s + (f" {_p(d['p_mcnemar'])}" if d.get("p_mcnemar") is not None else "")


def _avg_view(block: Mapping[str, Any]) -> dict[str, Any]:
    """The flat ``avg*`` keys of a checkpoint (or raredis) block as a cell dict."""
    return {"acc": block.get("avg"), "ci_low": block.get("avg_ci_low"), "ci_high": block.get("avg_ci_high"),
            "run_std": block.get("avg_run_std", block.get("avg_std"))}


def _n_cell(values: Iterable[Any]) -> str:
    ns = list(dict.fromkeys(int(v) for v in values if isinstance(v, (int, float))))
    return "/".join(str(n) for n in ns) or "-"


def _render(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths, strict=True))).rstrip()
             for r in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return lines


def format_table(results: Mapping[str, Mapping[str, Any]], display_names: Mapping[str, str] | None = None) -> str:
    """Benchmarks x checkpoints (accuracy % [interval], n), then each checkpoint minus the reference (diff [CI] p).

    ``results`` is metrics/eval.json; ``display_names`` maps benchmark keys to printed names (e.g. ``mmlu`` -> ``MMLU-Med``).
    """
    names = dict(display_names or {})
    ckpts = [c for c, v in results.items() if isinstance(v, Mapping)]
    benches: list[str] = []
    cats: list[str] = []
    for c in ckpts:
        benches += [b for b, v in results[c].items() if isinstance(v, Mapping) and "acc" in v and b not in benches]
        cats += [k for k, v in (results[c].get("raredis") or {}).items() if isinstance(v, Mapping) and k not in cats]
    main = [b for b in benches if not is_rare_benchmark(b)]
    rare = [b for b in benches if is_rare_benchmark(b)]
    k = max((int(results[c].get("n_runs", 1)) for c in ckpts), default=1)
    show_std = k > 1
    level = next((results[c]["ci_level"] for c in ckpts if "ci_level" in results[c]), 0.95)

    def rare_block(c: str) -> Mapping[str, Any]:
        return results[c].get("raredis") or {}

    rows: list[tuple[str, ...]] = [("benchmark", "n", *ckpts)]
    rows += [(names.get(b, b), _n_cell(results[c].get(b, {}).get("n") for c in ckpts),
              *(_acc_cell(results[c].get(b), show_std) for c in ckpts)) for b in main]
    if main:
        n_b = _n_cell(results[c].get("n_benchmarks", len(main)) for c in ckpts)
        rows.append((f"avg ({n_b} benchmark{'' if n_b == '1' else 's'})",
                     _n_cell(results[c].get("avg_n", sum(results[c].get(b, {}).get("n", 0) for b in main)) for c in ckpts),
                     *(_acc_cell(_avg_view(results[c]), show_std) for c in ckpts)))
    rows += [(names.get(b, b), _n_cell(results[c].get(b, {}).get("n") for c in ckpts),
              *(_acc_cell(results[c].get(b), show_std) for c in ckpts)) for b in rare]
    rows += [(f"  {_CATEGORY_NAMES.get(x, x)}", _n_cell(rare_block(c).get(x, {}).get("n") for c in ckpts),
              *(_acc_cell(rare_block(c).get(x), show_std) for c in ckpts)) for x in cats]
    if cats:
        rows.append((f"  avg ({len(cats)} categories)",
                     _n_cell(rare_block(c).get("avg_n", sum(rare_block(c).get(x, {}).get("n", 0) for x in cats)) for c in ckpts),
                     *(_acc_cell(_avg_view(rare_block(c)), show_std) for c in ckpts)))
    rows.append(("invalid % before/after", "",
                 *(f"{_pct(results[c].get('invalid_before', 0))}/{_pct(results[c].get('invalid_after', 0))}" for c in ckpts)))
    lines = _render(rows)
    pct = f"{100 * level:g}%"
    lines.append(f"accuracy % [{pct} Wilson interval over the n questions; avg rows: {pct} bootstrap over questions within each part]")
    if show_std:
        lines.append(f"± run-to-run std over k={k} runs (population std: decoding variance, not question sampling)")

    vs = [(c, key) for c in ckpts for key in results[c] if key.startswith("vs_") and isinstance(results[c][key], Mapping)]
    if vs:
        def diff_row(label: str, get: Any, average: bool = False) -> tuple[str, ...]:
            return (label, *(_diff_cell(get(results[c][key]), average) for c, key in vs))

        rows2 = [("difference (points)", *(f"{c} − {key[3:]}" for c, key in vs))]
        rows2 += [diff_row(names.get(b, b), lambda v, b=b: v.get(b)) for b in main]
        if main:
            rows2.append(diff_row("avg", lambda v: v.get("avg"), average=True))
        rows2 += [diff_row(names.get(b, b), lambda v, b=b: v.get(b)) for b in rare]
        rows2 += [diff_row(f"  {_CATEGORY_NAMES.get(x, x)}", lambda v, x=x: (v.get("raredis") or {}).get(x)) for x in cats]
        if cats:
            rows2.append(diff_row("  avg", lambda v: (v.get("raredis") or {}).get("avg"), average=True))
        lines += ["", *_render(rows2),
                  f"diff in points [{pct} paired bootstrap interval: questions resampled" + (", runs nested]" if k > 1 else "]"),
                  "p = exact McNemar test on discordant questions" + (" (majority-correct over the k runs)" if k > 1 else "")]
        if any(isinstance(a, Mapping) and "p_perm_macro" in a
               for c, key in vs for a in (results[c][key].get("avg"), (results[c][key].get("raredis") or {}).get("avg"))):
            lines.append("avg rows: perm p = paired permutation test of the macro difference (each question's two answers "
                         f"swapped at random, within its benchmark/category; exact up to {PERM_EXACT_MAX} differing questions, "
                         f"else {PERM_DRAWS} draws)")
    return "\n".join(lines)
