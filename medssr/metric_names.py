"""Every MLflow metric name medssr logs, in one registry: its pattern, the quantity and the unit.

A name is ``/``-separated segments; a pattern writes a varying part as a placeholder (``eval/<benchmark>/acc``), whose
values ``PLACEHOLDERS`` spells out, and a segment that may be absent in brackets: ``eval[/<checkpoint>]/avg`` is
``eval/avg`` for the final checkpoint and ``eval/base/avg`` for the others. Every name matches exactly one entry
(tests/test_metric_names.py proves no two entries share a name). One name per quantity: a step series is not repeated
as a ``_last``/``_mean`` scalar, and the parent run's headline copies keep their stage run's names.

The builders below are the only code that spells names. Logging goes through ``check_names`` (``tracking.stage_run``
yields an mlflow whose ``log_metric(s)`` call it): an unregistered name raises ``UnregisteredMetricError`` with
``MEDSSR_STRICT=1`` (tests, CI) and otherwise warns once and is logged anyway, so a naming slip cannot throw
away hours of training. ``python -m medssr.metric_names --check <tracking uri>`` lists a store's unregistered names. ``python -m medssr.metric_names > docs/metrics.md`` writes the table a researcher reads.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from medssr.errors import contract_slip
from medssr.records import CATEGORIES

_NAME = r"[A-Za-z0-9_.-]+"
_EVAL_KEYS = ("raredis", "vs_base", "avg")  # segments eval.json gives a meaning of their own


def category_key(category: str) -> str:
    """``Related disorders`` -> ``related_disorders``: a RareDis-Sub category as a name segment (and eval.json key)."""
    return category.lower().replace(" ", "_")


def _one_of(values: Iterable[str]) -> str:
    return "|".join(re.escape(v) for v in values)


# placeholder -> (regex of one value, what it stands for). Values never hold "/"; those that could collide with a
# segment eval.json reserves exclude it, so that eval/raredis/avg cannot read as eval/<checkpoint>/avg.
PLACEHOLDERS: dict[str, tuple[str, str]] = {
    "benchmark": (rf"(?!(?:{_one_of(_EVAL_KEYS)})(?:/|$)){_NAME}", "an evaluated benchmark (eval.benchmarks), e.g. medqa, raredis_sub"),
    "checkpoint": (rf"(?!(?:{_one_of(_EVAL_KEYS)})(?:/|$)){_NAME}", "a checkpoint evaluated before the final one, e.g. base, stage1"),
    "category": (_one_of(category_key(c) for c in CATEGORIES), "a RareDis-Sub category: " + ", ".join(category_key(c) for c in CATEGORIES)),
    "stage": ("stage1|stage2", "the training stage: stage1 or stage2"),
    "ci": ("ci_low|ci_high", "ci_low or ci_high: the lower or upper end of the interval"),
    "source": (_NAME, "a data source, e.g. medqa, pubmed"),
    "retriever": (_NAME, "a corpus index evaluated for recall (corpus embedders), e.g. bm25"),
    "part": ("input|output|total", "input, output or total tokens"),
    "kind": (_NAME, "a fault kind of medssr.llm.ledger.FAULT_KINDS, e.g. rate_limit"),
    "reason": (_NAME, "why a generated question was rejected, e.g. parse_error"),
    "lo": (r"[0-9][0-9.e+-]*", "lower bound of an agreement bucket"),
    "hi": (r"[0-9][0-9.e+-]*", "upper bound of an agreement bucket"),
    "group": ("senior|junior|overall", "a reviewer group (senior, junior) or overall"),
    "key": (_NAME, "an OpenRLHF TensorBoard tag without a medssr name, '/' written '_'"),
    "metric": (_NAME, "a system metric MLflow samples, e.g. cpu_utilization_percentage"),
}


@dataclass(frozen=True)
class MetricName:
    """One registry entry: a name or name family, the quantity it holds, and the unit."""

    pattern: str
    quantity: str
    unit: str

    @functools.cached_property
    def regex(self) -> re.Pattern[str]:
        return re.compile(_pattern_regex(self.pattern))


def _segment_regex(segment: str) -> str:
    parts = re.split(r"<([a-z_]+)>", segment)  # literal, placeholder, literal, ...
    return "".join(f"(?:{PLACEHOLDERS[p][0]})" if i % 2 else re.escape(p) for i, p in enumerate(parts))


def _pattern_regex(pattern: str) -> str:
    out = ""
    for optional, segment in re.findall(r"\[/([^\]]+)\]|/?([^/\[]+)", pattern):
        out += f"(?:/{_segment_regex(optional)})?" if optional else ("/" if out else "") + _segment_regex(segment)
    return out


def _m(pattern: str, quantity: str, unit: str) -> MetricName:
    return MetricName(pattern, quantity, unit)


_C = "[/<checkpoint>]"  # eval names: absent for the final checkpoint, the checkpoint's name for the others

REGISTRY: tuple[MetricName, ...] = (
    # stage `model`
    _m("model/size_mb", "size of the materialised policy directory (params model.dir)", "MiB"),
    _m("model/materialize_s", "time to materialise the policy", "s"),
    # stage `prepare`
    _m("prepare/train_rows", "real questions in data/prepared/train.jsonl", "questions"),
    _m("prepare/train_rows/<source>", "real training questions from one source", "questions"),
    _m("prepare/seeds", "seed questions for synthesis", "questions"),
    _m("prepare/raredis_sub", "questions in the RareDis-Sub benchmark", "questions"),
    _m("prepare/raredis/<category>", "RareDis-Sub questions of one category", "questions"),
    _m("prepare/entities", "rare-disease entities kept for tagging", "entities"),
    _m("prepare/quarantined", "records rejected as malformed (data/prepared/rejected.jsonl)", "records"),
    _m("prepare/leakage_removed/<source>", "training questions of a source dropped as near-copies of a benchmark question", "questions"),
    _m("prepare/rare/<benchmark>", "benchmark questions tagged rare-disease", "questions"),
    # stage `corpus`
    _m("corpus/passages", "passages in the knowledge corpus index", "passages"),
    _m("corpus/source_passages/<source>", "corpus passages from one source", "passages"),
    _m("corpus/covered_entities", "rare-disease entities with at least one passage", "entities"),
    _m("corpus/build_seconds", "time to build the corpus index", "s"),
    _m("corpus/build_passages_per_s", "corpus index build throughput", "passages/s"),
    _m("corpus/recall_at_4/<retriever>", "share of entity queries whose passage is among the top 4 retrieved", "fraction 0-1"),
    # stage `synthesize`
    _m("synth/accepted", "synthetic questions accepted", "questions"),
    _m("synth/attempts", "generation attempts", "attempts"),
    _m("synth/acceptance_rate", "share of attempts that gave an accepted question", "fraction 0-1"),
    _m("synth/rare_ratio_target", "share of rare-disease prompts asked for (params synth.rare_ratio, α)", "fraction 0-1"),
    _m("synth/near_duplicates_dropped", "valid synthetic questions dropped as near-duplicates (rapidfuzz ratio >= "
       "synth.dedup_threshold) of an accepted question, a seed or a benchmark question", "questions"),
    _m("synth/rare_share_measured", "share of accepted questions the benchmark rare-disease tagger flags (the paper's ratio)",
       "fraction 0-1"),
    _m("synth/rare_share_target", "measured rare-disease share asked for (params synth.rare_share_target)", "fraction 0-1"),
    _m("synth/f2_share", "share of accepted questions written from an F.2 (knowledge-injected) prompt", "fraction 0-1"),
    _m("synth/alpha_used", "mean α over the attempts (synth.rare_ratio, or steered toward synth.rare_share_target)",
       "fraction 0-1"),
    _m("synth/share_dropped/<reason>", "questions dropped to hold synth.rare_share_target, e.g. rare_in_f1", "questions"),
    _m("synth/tokens_per_accepted_question/<part>", "generator tokens spent per accepted question", "tokens"),
    _m("synth/cost_usd", "generator cost of the stage", "USD"),
    _m("synth/contamination_dropped", "accepted questions dropped as near-copies of a benchmark question", "questions"),
    _m("synth/cache_hits", "generator requests answered from the response cache", "requests"),
    _m("synth/requests", "generator requests made", "requests"),
    _m("synth/http_requests", "HTTP requests sent for them (batches, retries)", "requests"),
    _m("synth/retries", "generator requests retried", "requests"),
    _m("synth/faults/<kind>", "faults met by kind, retried ones included", "faults"),
    _m("synth/rejected/<reason>", "generated questions rejected, by reason", "questions"),
    # stage `label`
    _m("label/kept", "synthetic questions kept with a majority-vote label", "questions"),
    _m("label/dropped_no_valid", "questions dropped: no vote gave a valid answer", "questions"),
    _m("label/dropped_ties", "questions dropped: the vote tied", "questions"),
    _m("label/dropped_low_agreement", "questions dropped: agreement below label.min_agreement", "questions"),
    _m("label/dropped_high_agreement", "questions dropped as too easy: agreement above label.max_agreement", "questions"),
    _m("label/agreement_mean", "mean share of votes agreeing with the majority, kept questions", "fraction 0-1"),
    _m("label/valid_vote_rate", "share of votes giving a valid answer", "fraction 0-1"),
    _m("label/votes_per_s", "voting throughput", "votes/s"),
    _m("label/tokens_per_s", "voting generation throughput", "tokens/s"),
    _m("label/reliability/majority_acc", "majority-vote accuracy on real questions with gold answers", "fraction 0-1"),
    _m("label/reliability/majority_acc_<ci>", "95 % Wilson interval of label/reliability/majority_acc", "fraction 0-1"),
    _m("label/reliability/single_acc", "single-sample accuracy on the same real questions", "fraction 0-1"),
    _m("label/reliability/single_acc_<ci>", "95 % Wilson interval of label/reliability/single_acc", "fraction 0-1"),
    _m("label/reliability/pass_at_g", "pass@G on the real questions: share where some of the G votes equals gold", "fraction 0-1"),
    _m("label/reliability/pass_at_g_<ci>", "95 % Wilson interval of label/reliability/pass_at_g", "fraction 0-1"),
    _m("label/reliability/majority_ratio", "majority ratio on the real questions: mean winner's votes / G", "fraction 0-1"),
    _m("label/reliability/majority_ratio_<ci>", "95 % bootstrap interval (questions resampled) of label/reliability/majority_ratio",
       "fraction 0-1"),
    _m("label/reliability/bucket_<lo>_<hi>_n", "real questions whose agreement falls in [lo, hi)", "questions"),
    _m("label/reliability/bucket_<lo>_<hi>_acc", "majority-vote accuracy of the questions in that agreement bucket", "fraction 0-1"),
    # stages `stage1`, `stage2`: one point per logged step (medssr.rl.callbacks) ...
    _m("train/<stage>/reward_mean", "mean reward of the step's rollouts", "reward"),
    _m("train/<stage>/reward_std", "standard deviation of those rewards", "reward"),
    _m("train/<stage>/kl", "KL divergence of the policy from the reference model", "nats"),
    _m("train/<stage>/loss", "policy loss", "loss"),
    _m("train/<stage>/learning_rate", "learning rate", "lr"),
    _m("train/<stage>/grad_norm", "gradient norm before clipping", "norm"),
    _m("train/<stage>/completion_length", "mean completion length", "tokens"),
    _m("train/<stage>/clipped_ratio", "share of completions cut at max_completion_length", "fraction 0-1"),
    _m("train/<stage>/token_entropy", "mean per-token entropy of the policy", "nats"),
    _m("train/<stage>/zero_std_group_share", "share of groups whose rewards all equal (no learning signal)", "fraction 0-1"),
    _m("train/<stage>/distinct_answers", "distinct answers per group of G rollouts, averaged (collapse signal)", "answers"),
    _m("train/<stage>/answer_entropy", "entropy of the answers within a group, averaged (collapse signal)", "nats"),
    _m("train/<stage>/all_agree_share", "share of groups whose G rollouts all give the same valid answer", "fraction 0-1"),
    _m("train/<stage>/valid_answer_share", "share of rollouts with a valid answer", "fraction 0-1"),
    _m("train/<stage>/response_found_share", "share of rollouts whose response part was found (OpenRLHF)", "fraction 0-1"),
    _m("train/<stage>/pseudo_label_agreement", "share of rollouts whose answer equals the label the reward used", "fraction 0-1"),
    _m("train/<stage>/offline_label_agreement", "share of rollouts agreeing with the offline majority label (online voting)",
       "fraction 0-1"),
    _m("train/<stage>/accuracy", "share of rollouts with the gold answer (gold reward)", "fraction 0-1"),
    _m("train/<stage>/heldout_acc", "greedy F.4 accuracy of the live policy on the fixed held-out benchmark questions "
       "(step 0 and every train.eval_every steps; medssr.rl.heldout)", "fraction 0-1"),
    _m("train/<stage>/heldout_acc_<ci>", "95 % Wilson interval of train/<stage>/heldout_acc over its heldout_n questions",
       "fraction 0-1"),
    _m("train/<stage>/heldout_valid_share", "share of those held-out answers that name one valid option", "fraction 0-1"),
    _m("train/<stage>/heldout_n", "questions in that held-out set", "questions"),
    _m("train/<stage>/step_time_s", "wall time of the step", "s"),
    _m("train/<stage>/generation_s", "time spent generating rollouts in the step", "s"),
    _m("train/<stage>/update_s", "time spent updating the policy in the step", "s"),
    _m("train/<stage>/tokens_per_s", "completion tokens generated per second of step time", "tokens/s"),
    _m("train/<stage>/peak_rss_mb", "peak resident memory of the trainer so far", "MiB"),
    _m("train/<stage>/peak_gpu_mb", "peak GPU memory allocated so far", "MiB"),
    _m("train/<stage>/orl_<key>", "an OpenRLHF training scalar medssr has no name for", "as OpenRLHF logs it"),
    _m("train/<stage>/eval_<key>", "an OpenRLHF evaluation scalar", "as OpenRLHF logs it"),
    # ... and once per stage run (medssr.rl.run)
    _m("train/<stage>/global_step", "optimizer steps taken", "steps"),
    _m("train/<stage>/steps_logged", "steps with a logged row", "steps"),
    _m("train/<stage>/train_s", "training wall time", "s"),
    # stage `evaluate` (eval/scoring.py: metrics/eval.json flattened); the final checkpoint's names carry no checkpoint
    _m(f"eval{_C}/<benchmark>/acc", "accuracy on the benchmark, mean over the k runs", "fraction 0-1"),
    _m(f"eval{_C}/<benchmark>/<ci>", "Wilson interval of that accuracy (level eval.confidence)", "fraction 0-1"),
    _m(f"eval{_C}/<benchmark>/n", "questions of the benchmark", "questions"),
    _m(f"eval{_C}/<benchmark>/run_std", "standard deviation of the accuracy across the k decoding runs", "fraction 0-1"),
    _m(f"eval{_C}/<benchmark>/echo_rate", "share of outputs that only repeat the prompt's option lines", "fraction 0-1"),
    # eval/<x>/invalid_*: x is a non-final checkpoint (all benchmarks) or a benchmark (final checkpoint); eval refuses a
    # benchmark named like a checkpoint, so within one run the segment is never ambiguous
    _m(f"eval{_C}[/<benchmark>]/invalid_before", "share of outputs without a valid answer before the constrained second pass, "
       "over all benchmarks or on <benchmark>", "fraction 0-1"),
    _m(f"eval{_C}[/<benchmark>]/invalid_after", "the same share after the constrained second pass", "fraction 0-1"),
    _m(f"eval{_C}/avg", "accuracy averaged over the benchmarks (the paper's nine when all are evaluated)", "fraction 0-1"),
    _m(f"eval{_C}/avg_<ci>", "interval of that average", "fraction 0-1"),
    _m(f"eval{_C}/avg_run_std", "standard deviation of the average across the k runs", "fraction 0-1"),
    _m(f"eval{_C}/avg_n", "questions behind the average", "questions"),
    _m(f"eval{_C}/n_benchmarks", "benchmarks in the average", "benchmarks"),
    _m(f"eval{_C}/n_runs", "decoding runs per question (eval.runs, k)", "runs"),
    _m(f"eval{_C}/ci_level", "level of every interval (eval.confidence)", "fraction 0-1"),
    _m(f"eval{_C}/raredis/<category>/acc", "accuracy on one RareDis-Sub category", "fraction 0-1"),
    _m(f"eval{_C}/raredis/<category>/<ci>", "Wilson interval of that accuracy", "fraction 0-1"),
    _m(f"eval{_C}/raredis/<category>/n", "questions of the category", "questions"),
    _m(f"eval{_C}/raredis/<category>/run_std", "standard deviation of that accuracy across the k runs", "fraction 0-1"),
    _m(f"eval{_C}/raredis/avg", "accuracy averaged over the RareDis-Sub categories", "fraction 0-1"),
    _m(f"eval{_C}/raredis/avg_<ci>", "interval of that average", "fraction 0-1"),
    _m(f"eval{_C}/raredis/avg_run_std", "standard deviation of that average across the k runs", "fraction 0-1"),
    _m(f"eval{_C}/raredis/avg_n", "questions behind that average", "questions"),
    _m(f"eval{_C}/vs_base/<benchmark>/diff", "accuracy minus the base model's, same questions", "fraction -1..1"),
    _m(f"eval{_C}/vs_base/<benchmark>/<ci>", "paired bootstrap interval of that difference", "fraction -1..1"),
    _m(f"eval{_C}/vs_base/<benchmark>/n", "questions both answered", "questions"),
    _m(f"eval{_C}/vs_base/<benchmark>/b", "questions only this checkpoint gets right (majority over runs)", "questions"),
    _m(f"eval{_C}/vs_base/<benchmark>/c", "questions only the base model gets right", "questions"),
    _m(f"eval{_C}/vs_base/<benchmark>/p_mcnemar", "exact McNemar p-value of the difference", "probability"),
    _m(f"eval{_C}/vs_base/avg/diff", "average accuracy minus the base model's", "fraction -1..1"),
    _m(f"eval{_C}/vs_base/avg/<ci>", "paired bootstrap interval of that difference", "fraction -1..1"),
    _m(f"eval{_C}/vs_base/avg/n", "questions behind the compared averages", "questions"),
    _m(f"eval{_C}/vs_base/avg/b", "questions only this checkpoint gets right", "questions"),
    _m(f"eval{_C}/vs_base/avg/c", "questions only the base model gets right", "questions"),
    _m(f"eval{_C}/vs_base/avg/p_perm_macro", "paired permutation p-value of the average (macro) difference", "probability"),
    _m(f"eval{_C}/vs_base/avg/p_mcnemar_pooled", "exact McNemar p-value of the averaged benchmarks' pooled questions (b vs c)",
       "probability"),
    _m(f"eval{_C}/vs_base/raredis/<category>/diff", "category accuracy minus the base model's", "fraction -1..1"),
    _m(f"eval{_C}/vs_base/raredis/<category>/<ci>", "paired bootstrap interval of that difference", "fraction -1..1"),
    _m(f"eval{_C}/vs_base/raredis/<category>/n", "questions of the category both answered", "questions"),
    _m(f"eval{_C}/vs_base/raredis/<category>/b", "questions only this checkpoint gets right", "questions"),
    _m(f"eval{_C}/vs_base/raredis/<category>/c", "questions only the base model gets right", "questions"),
    _m(f"eval{_C}/vs_base/raredis/<category>/p_mcnemar", "exact McNemar p-value of the category difference", "probability"),
    _m(f"eval{_C}/vs_base/raredis/avg/diff", "RareDis-Sub average minus the base model's", "fraction -1..1"),
    _m(f"eval{_C}/vs_base/raredis/avg/<ci>", "paired bootstrap interval of that difference", "fraction -1..1"),
    _m(f"eval{_C}/vs_base/raredis/avg/n", "RareDis-Sub questions both answered", "questions"),
    _m(f"eval{_C}/vs_base/raredis/avg/b", "questions only this checkpoint gets right", "questions"),
    _m(f"eval{_C}/vs_base/raredis/avg/c", "questions only the base model gets right", "questions"),
    _m(f"eval{_C}/vs_base/raredis/avg/p_perm_macro", "paired permutation p-value of the RareDis-Sub average (macro) difference",
       "probability"),
    _m(f"eval{_C}/vs_base/raredis/avg/p_mcnemar_pooled", "exact McNemar p-value of the categories' pooled questions (b vs c)",
       "probability"),
    # `medssr review import` (a run of its own, after the pipeline)
    _m("review/<group>/n_questions", "questions rated", "questions"),
    _m("review/<group>/n_ratings", "ratings given", "ratings"),
    _m("review/<group>/n_incorrect", "questions some reviewer marked incorrect", "questions"),
    _m("review/<group>/incorrect_pct", "share of questions marked incorrect", "percent"),
    _m("review/<group>/n_harmful", "questions some reviewer marked harmful", "questions"),
    _m("review/<group>/harmful_pct", "share of questions marked harmful", "percent"),
    _m("review/<group>/plausibility_mean", "mean plausibility rating", "1-5 scale"),
    _m("review/<group>/plausibility_sd", "sample standard deviation of the plausibility ratings", "1-5 scale"),
    # sampled by MLflow itself on long stages (medssr.tracking.LONG_STAGES), not named by medssr
    _m("system/<metric>", "CPU, memory, disk, network and GPU use of the stage process, sampled by MLflow", "as MLflow names it"),
)


# The pipeline parent run's metrics, in the order a reader wants them: copies of stage-run metrics under the same names
# (medssr.tracking.log_summary_to_parent); every other number stays on its stage run.
HEADLINE_METRICS = ("eval/avg", "eval/avg_ci_low", "eval/avg_ci_high", "eval/raredis/avg", "eval/raredis/avg_ci_low",
                    "eval/raredis/avg_ci_high", "eval/vs_base/avg/diff", "synth/accepted", "synth/rare_share_measured",
                    "synth/alpha_used", "label/kept", "label/agreement_mean")


class UnregisteredMetricError(ValueError):
    """A metric name no registry entry matches: a bug in the code that logs it (hence no MedssrError: keep the traceback)."""


def matches(name: str) -> list[MetricName]:
    """The registry entries ``name`` matches (exactly one for a registered name)."""
    return [e for e in REGISTRY if e.regex.fullmatch(name)]


@functools.lru_cache(maxsize=4096)
def lookup(name: str) -> MetricName:
    """The one registry entry of ``name``; raises UnregisteredMetricError when there is none (or, a registry bug, two)."""
    found = matches(name)
    if len(found) == 1:
        return found[0]
    if not found:
        raise UnregisteredMetricError(f"MLflow metric {name!r} is not in the registry: add an entry (pattern, quantity, unit) to "
                                      "REGISTRY in medssr/metric_names.py, build the name with its helpers, and regenerate "
                                      "docs/metrics.md with `python -m medssr.metric_names > docs/metrics.md`")
    raise UnregisteredMetricError(f"MLflow metric {name!r} matches {len(found)} registry entries "
                                  f"({', '.join(e.pattern for e in found)}); each name needs exactly one")


def check_names(names: Iterable[str]) -> None:
    """Check names about to be logged: an unregistered one is a contract slip (``medssr.errors.contract_slip``: raises
    under ``MEDSSR_STRICT=1``, else warns once per name and is logged anyway)."""
    for name in names:
        try:
            lookup(name)
        except UnregisteredMetricError as e:
            contract_slip(e, once=f"metric {name}", stacklevel=4)


class CheckedMlflow:
    """The ``mlflow`` module, except that ``log_metric``/``log_metrics`` pass their names through ``check_names``."""

    def __init__(self, module: Any):
        self._module = module

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._module, attr)

    def log_metric(self, key: str, *args: Any, **kwargs: Any) -> Any:
        check_names([key])
        return self._module.log_metric(key, *args, **kwargs)

    def log_metrics(self, metrics: Mapping[str, float], *args: Any, **kwargs: Any) -> Any:
        check_names(metrics)
        return self._module.log_metrics(metrics, *args, **kwargs)


# --------------------------------------------------------------------------------------------------------------
# the builders: every name medssr logs is spelled here


def metric(stage: str, name: str) -> str:
    """``<stage>/<name>`` (e.g. ``label/agreement_mean``, ``model/size_mb``)."""
    return f"{stage}/{name}"


def train_metric(stage: str, name: str) -> str:
    """``train/<stage>/<name>``: a training stage's step series and run scalars."""
    return f"train/{stage}/{name}"


def eval_prefix(checkpoint: str, final: bool) -> str:
    """``eval`` for the final checkpoint, ``eval/<checkpoint>`` for the others (e.g. ``eval/base/medqa/acc``)."""
    return "eval" if final else f"eval/{checkpoint}"


def eval_metric(benchmark: str, what: str = "acc", prefix: str = "eval") -> str:
    """``eval/<benchmark>/<what>`` (``prefix`` from ``eval_prefix`` for a non-final checkpoint)."""
    return f"{prefix}/{benchmark}/{what}"


def raredis_metric(category: str, what: str = "acc", prefix: str = "eval") -> str:
    """``eval/raredis/<category>/<what>`` for a RareDis-Sub category as records.CATEGORIES spells it."""
    return f"{prefix}/raredis/{category_key(category)}/{what}"


def flatten(block: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """Nested numeric JSON (an eval.json block) -> ``{<prefix>/<key>/<key>...: value}``; non-numbers are left out."""
    out: dict[str, float] = {}
    for k, v in block.items():
        if isinstance(v, Mapping):
            out |= flatten(v, f"{prefix}/{k}")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}/{k}"] = float(v)
    return out


def prepare_category_metric(category: str) -> str:
    """``prepare/raredis/<category>``: RareDis-Sub questions of one category."""
    return metric("prepare", f"raredis/{category_key(category)}")


def label_bucket_metric(lo: float, hi: float, what: str) -> str:
    """``label/reliability/bucket_<lo>_<hi>_<what>`` (``what``: n or acc) of one agreement bucket."""
    return metric("label", f"reliability/bucket_{lo:g}_{hi:g}_{what}")


def review_metric(group: str, name: str) -> str:
    """``review/<group>/<name>`` (group: senior, junior or overall)."""
    return metric("review", f"{group}/{name}")


# --------------------------------------------------------------------------------------------------------------
# docs/metrics.md


def markdown() -> str:
    """docs/metrics.md: the registry as a table, generated (``python -m medssr.metric_names > docs/metrics.md``)."""
    lines = ["# MLflow metric names", "",
             "Generated from `medssr/metric_names.py` by `python -m medssr.metric_names > docs/metrics.md`; do not edit by hand.",
             "Every metric a stage run (or the pipeline's parent run, which carries copies of the headline metrics under the same",
             "names) holds in MLflow matches exactly one row. `<placeholder>`: a varying part of a segment, listed below the",
             "table; `[/...]`: a segment that may be absent (eval names carry no checkpoint for the final checkpoint).", "",
             "| Name | Quantity | Unit |", "|---|---|---|"]
    lines += [f"| `{e.pattern}` | {e.quantity} | {e.unit} |" for e in REGISTRY]
    lines += ["", "Headline metrics, copied onto the pipeline's parent run (the runs table's columns): "
              + ", ".join(f"`{m}`" for m in HEADLINE_METRICS) + "."]
    lines += ["", "| Placeholder | Stands for |", "|---|---|"]
    lines += [f"| `<{p}>` | {what} |" for p, (_, what) in PLACEHOLDERS.items()]
    return "\n".join(lines) + "\n"


def unregistered(names: Iterable[str]) -> list[str]:
    """The names among ``names`` that match no registry entry, sorted."""
    return sorted({n for n in names if not matches(n)})


def logged_names(tracking_uri: str) -> set[str]:
    """Every metric name held by any run of any experiment in an MLflow store (what a researcher finds there)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    names: set[str] = set()
    token = None
    while ids:
        page = client.search_runs(ids, max_results=1000, page_token=token)
        names |= {k for r in page for k in r.data.metrics}
        token = page.token
        if not token:
            break
    return names


def main(argv: list[str] | None = None) -> int:
    """``python -m medssr.metric_names``: docs/metrics.md on stdout; ``--check <tracking uri>``: list a store's unregistered names."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m medssr.metric_names", description=__doc__.splitlines()[0])
    ap.add_argument("--check", metavar="TRACKING_URI", help="exit 1 listing the metric names in this MLflow store the registry lacks")
    args = ap.parse_args(argv)
    if args.check is None:
        sys.stdout.write(markdown())
        return 0
    bad = unregistered(logged_names(args.check))
    for name in bad:
        print(f"unregistered MLflow metric: {name}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
