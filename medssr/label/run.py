"""The `label` stage: the policy votes G times on every synthetic question; the majority becomes its label.

Prompt: F.4 (``prompts/eval_f4.txt``), the same prompt evaluation uses, with the question rendered by
``Question.render()``; sampling settings from ``label.sampling`` (paper C.2: G = 8, T = 1.0, top-p 1.0, top-k -1).

Resumable and reproducible: each question's G samples draw from their own random streams seeded by
``(label.seed, question id, sample index)``, and each question's G outputs are appended (fsync'd) to
``<out dir>/.<out stem>.progress.jsonl`` as soon as they are complete; the votes are read from them on load. The
loop, its fingerprint and its chunking rule are ``medssr.rollout``'s, shared with the evaluation: with hf a chunk is
what one batch holds (ceil(batch_size / G) questions per engine) and an unfinished chunk is sampled again whole, so
a kill loses at most the questions in flight; with vLLM only a chunk's missing questions are sampled. The final
file is written atomically in input order, byte-identical to an uninterrupted run.

The label's reliability is measured the same way on ``label.reliability_n`` real benchmark questions with gold
answers: majority-vote accuracy (TTRL's label accuracy) vs single-sample accuracy, by agreement bucket, with pass@G
(some vote is right: the ceiling of any label drawn from the votes) and the majority ratio (mean agreement).

The agreement band ``[label.min_agreement, label.max_agreement]`` filters the synthetic questions; the report, the
PNG and the plot rows (``{agreement, before, after}``, for `dvc plots`) show the agreement histogram before and after it.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medssr.answers import extract_answer
from medssr.config import Params, to_flat_dict
from medssr.errors import MedssrError
from medssr.files import atomic_path, write_json_atomic
from medssr.label.vote import STATUSES, VoteResult, agreement_bucket, count_statuses, majority_vote
from medssr.models import weights_fingerprint
from medssr.records import Question, read_questions, write_jsonl
from medssr.rollout import Item, RolloutSpec, RolloutStats, cache_path_for, chunk_size_for, progress_path_for, rollout
from medssr.sampling import Completion

PROMPT_NAME = "eval_f4"
BUCKETS = (0.0, 0.5, 0.75, 1.0)
MAJORITY_RATIO_BOOT = 2000  # bootstrap resamples (of questions) for the majority ratio's interval
# report key of each drop reason (a status of medssr.label.vote)
DROP_KEYS = {"no_valid": "dropped_no_valid", "tie": "dropped_ties", "low_agreement": "dropped_low_agreement",
             "too_easy": "dropped_high_agreement"}


class LabelError(MedssrError, ValueError):
    """The label stage cannot run; the message names the file or param to fix."""


def reliability_sample(benchmarks_dir: str | os.PathLike, n: int, seed: int) -> list[Question]:
    """A seeded sample of ``n`` real questions with gold answers across ``<dir>/*.jsonl`` (file order by name)."""
    if n <= 0:
        return []
    d = Path(benchmarks_dir)
    files = sorted(d.glob("*.jsonl")) if d.is_dir() else []
    if not files:
        raise LabelError(f"{d}: no prepared benchmark files (*.jsonl) for label.reliability_n={n}; run the prepare stage "
                         "or set label.reliability_n: 0")
    pool = [q for f in files for q in read_questions(f) if q.answer is not None]
    rng = random.Random(f"reliability:{seed}")
    picked = sorted(rng.sample(range(len(pool)), min(n, len(pool))))
    return [pool[i] for i in picked]


def reliability_table(questions: Sequence[Question], results: Sequence[VoteResult], edges: Sequence[float] = BUCKETS,
                      seed: int = 0) -> dict[str, Any]:
    """Majority-label accuracy vs single-sample accuracy, overall and per agreement bucket (no answer counts as wrong),
    and TTRL's label metrics: pass@G (some vote equals gold) and the majority ratio (mean winner's votes / G; its
    interval is a seeded percentile bootstrap over questions, since it is a mean of ratios, not a proportion)."""
    import numpy as np

    from eval.stats import bootstrap_interval, stable_seed, wilson_interval  # pure statistics: the evaluation's intervals

    n = len(questions)
    if n == 0:
        return {"n": 0}
    maj = [r.majority == q.answer for q, r in zip(questions, results, strict=True)]
    single = [r.votes[0] == q.answer for q, r in zip(questions, results, strict=True)]
    any_right = [q.answer in r.votes for q, r in zip(questions, results, strict=True)]
    ratios = np.array([[r.agreement] for r in results])
    ratio = {"majority_ratio": float(ratios.mean()),
             "majority_ratio_ci": list(bootstrap_interval([ratios], MAJORITY_RATIO_BOOT, seed=stable_seed(seed, "label/majority_ratio")))}

    def acc(hits: Sequence[bool], name: str) -> dict[str, Any]:  # accuracy with its 95 % Wilson interval over the n questions
        if not hits:
            return {name: None, f"{name}_ci": None}
        return {name: sum(hits) / len(hits), f"{name}_ci": list(wilson_interval(sum(hits), len(hits)))}

    buckets = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        members = [i for i, r in enumerate(results) if agreement_bucket(r.agreement, edges) == (lo, hi)]
        buckets.append({"lo": lo, "hi": hi, "n": len(members), **acc([maj[i] for i in members], "majority_acc"),
                        **acc([single[i] for i in members], "single_acc")})
    return {"n": n, "g": len(results[0].votes), **acc(maj, "majority_acc"), **acc(single, "single_acc"),
            **acc(any_right, "pass_at_g"), **ratio, "buckets": buckets, "no_valid": sum(r.n_valid == 0 for r in results)}


def band_histogram(results: Sequence[VoteResult], g: int) -> list[dict[str, float | int]]:
    """Questions per agreement k/G (k = 0: no valid vote) before the filters and after them (the kept ones)."""
    rows = []
    for k in range(g + 1):
        at_k = [r for r in results if round(r.agreement * g) == k]
        rows.append({"agreement": round(k / g, 6), "before": len(at_k), "after": sum(r.kept for r in at_k)})
    return rows


def label_section(params: Params, model_dir: str, prompt_format: dict[str, Any] | None = None) -> dict[str, Any]:
    """The flat params the label stage depends on (logged on its MLflow run), with its prompt rule and probe sha."""
    from medssr.prompt_format import mlflow_params

    flat = {f"label.{k}": v for k, v in to_flat_dict(params.label).items()}
    flat["model.dir"] = model_dir
    flat["model.chat_template"] = params.model.chat_template
    flat.update(mlflow_params(prompt_format or {}))
    return flat


_DROP_STYLE = {"no_valid": ("no valid vote", "tab:gray"), "tie": ("tie", "tab:purple"),
               "low_agreement": ("below min_agreement", "tab:orange"), "too_easy": ("above max_agreement (too easy)", "tab:red")}


def _plot(path: Path, agreements: Sequence[float], statuses: Sequence[str], g: int, reliability: dict[str, Any],
          band: tuple[float, float] = (0.0, 1.0)) -> None:
    """Left: the agreement histogram before the band (whole bars) and after it (blue, kept), drops coloured by reason."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    xs = [k / g for k in range(g + 1)]

    def at(status: str) -> list[int]:
        return [sum(1 for a, s in zip(agreements, statuses, strict=True) if s == status and round(a * g) == k) for k in range(g + 1)]

    w = 0.8 / g
    bottom = at("kept")
    axes[0].bar(xs, bottom, width=w, label=f"after: kept ({sum(bottom)})", color="tab:blue")
    for status, (label, color) in _DROP_STYLE.items():
        ys = at(status)
        if any(ys):
            axes[0].bar(xs, ys, width=w, bottom=bottom, label=f"dropped: {label} ({sum(ys)})", color=color)
            bottom = [b + y for b, y in zip(bottom, ys, strict=True)]
    lo, hi = band
    if lo > 0 or hi < 1:
        axes[0].axvspan(lo - w / 2, hi + w / 2, color="tab:blue", alpha=0.08, label=f"band [{lo:g}, {hi:g}]")
    axes[0].set_xlabel(f"agreement (winner's votes / G, G={g})")
    axes[0].set_ylabel("synthetic questions")
    axes[0].set_title(f"Agreement of {len(agreements)} questions: before = whole bar, after = blue", fontsize="medium")
    axes[0].legend(fontsize="small")
    ax = axes[1]
    if reliability.get("n"):
        bs = reliability["buckets"]
        labels = [f"[{b['lo']:g},{b['hi']:g}{']' if b['hi'] == BUCKETS[-1] else ')'}\nn={b['n']}" for b in bs]
        for shift, name, label, color in ((0.0, "majority_acc", "majority", "tab:blue"), (0.4, "single_acc", "single sample", "tab:orange")):
            ys = [b[name] or 0 for b in bs]
            err = [[y - (b[f"{name}_ci"] or (y, y))[0] for y, b in zip(ys, bs, strict=True)],
                   [(b[f"{name}_ci"] or (y, y))[1] - y for y, b in zip(ys, bs, strict=True)]]  # 95 % Wilson interval
            ax.bar([i + shift for i in range(len(bs))], ys, width=0.4, yerr=err, capsize=3, label=label, color=color)
        ax.set_xticks([i + 0.2 for i in range(len(bs))], labels)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy vs gold")
        ax.set_title(f"Reliability on {reliability['n']} real: pass@G {reliability['pass_at_g']:.0%}, "
                     f"majority ratio {reliability['majority_ratio']:.2f}", fontsize="medium")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "reliability not measured", ha="center", va="center")
        ax.set_axis_off()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")  # the temporary name has no .png to infer it from
    plt.close(fig)


def run_label(params: Params, model_dir: str | os.PathLike, synthetic_path: str | os.PathLike, benchmarks_dir: str | os.PathLike,
              out_path: str | os.PathLike, report_path: str | os.PathLike, plot_path: str | os.PathLike, *, sampler: Any = None,
              chunk_size: int | None = None, progress: bool = True, track: bool = True,
              on_chunk: Callable[[int], None] | None = None, reliability_cache: str | os.PathLike | None = None,
              dry_run: bool = False, plot_data_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Vote on every synthetic question, write the labeled set, the report, the plot, and log them to MLflow.

    ``reliability_cache`` (a directory) keeps the votes on real questions after the run, keyed by the weights'
    content, decoding, seed and prompt: they do not depend on the synthetic set, so every value of a sweep reuses
    them. Without it they live in the stage's own progress file. ``plot_data_path`` gets the agreement histogram's
    rows before and after the band (JSON, for `dvc plots`). The questions are asked as training and evaluation
    ask them (``medssr.prompt_format``: the checkpoint's chat-template rule); ``dry_run`` prints that rule and the
    sampling settings and samples nothing."""
    from medssr.prompt_format import prompt_format, question_message
    from medssr.prompt_format import summary as prompt_summary
    from medssr.synth.prompts import load_prompt

    cfg = params.label
    sampling = cfg.sampling
    model_dir = str(model_dir)
    questions = read_questions(synthetic_path)  # RecordError names file:line: field
    if not Path(model_dir).exists():
        raise LabelError(f"{model_dir}: policy model directory not found (run the `model` stage or set model.dir)")
    real = reliability_sample(benchmarks_dir, cfg.reliability_n, cfg.seed)
    template = load_prompt(PROMPT_NAME)
    fmt = prompt_format(model_dir, params.model.chat_template)
    items_syn = [Item(q.id, question_message(template, q.render()), q.options) for q in questions]
    items_real = [Item(f"real:{q.source}:{q.id}", question_message(template, q.render()), q.options) for q in real]
    if dry_run:
        from medssr.models import load_tokenizer

        rec = fmt.record(fmt.renderer(load_tokenizer(model_dir)), template, items_syn[0].prompt if items_syn else None)
        print(prompt_summary("label", rec))
        print(f"[label] dry run: {len(items_syn)} synthetic + {len(items_real)} real questions x G={sampling.n}, "
              f"T={sampling.temperature} top_p={sampling.top_p} top_k={sampling.top_k} max_new_tokens={sampling.max_new_tokens} "
              f"stop_at_answer={sampling.stop_at_answer} on {sampling.backend}")
        return {"dry_run": True, "prompt_format": rec, "sampling": dataclasses.asdict(sampling)}
    if sampler is None:
        from medssr.sampling import make_sampler

        sampler = make_sampler(model_dir, backend=sampling.backend, dtype=params.model.dtype, batch_size=sampling.batch_size, seed=cfg.seed,
                               chat_template=fmt.chat_template, sampling=sampling)
    elif getattr(sampler, "chat_template", fmt.chat_template) != fmt.chat_template:
        raise LabelError(f"{model_dir}: the sampler given renders {'with' if sampler.chat_template else 'without'} the chat "
                         f"template, but the checkpoint's rule says {fmt.rule}")
    rec = fmt.record(sampler.render, template, items_syn[0].prompt if items_syn else None)
    print(prompt_summary("label", rec))
    if chunk_size is None:
        chunk_size = chunk_size_for(sampling, sampling.n)
    spec = RolloutSpec(sampling, sampling.n, cfg.seed, weights_fingerprint(model_dir), params.model.dtype, template.sha256,
                       chat_template=fmt.chat_template, chunk=chunk_size)
    real_prog = progress_path_for(out_path) if reliability_cache is None else cache_path_for(reliability_cache, "real", spec)
    stats = RolloutStats()
    samples: dict[str, list[Completion]] = {}
    for items, desc, path in ((items_syn, "voting on synthetic", progress_path_for(out_path)),
                              (items_real, "voting on real (reliability)", real_prog)):
        if items:
            got, st = rollout(sampler, spec, items, path, progress=progress, desc=desc, on_chunk=on_chunk)
            samples.update(got)
            stats.add(st)
    # a cut-off last line is unfinished, not a vote (same rule as the evaluation)
    votes = {it.key: [extract_answer(c.text, it.options, c.finish_reason != "length") for c in samples[it.key]]
             for it in items_syn + items_real}

    results = [majority_vote(votes[q.id], q.id, cfg.seed, cfg.ties, cfg.min_agreement, cfg.max_agreement) for q in questions]
    labeled = [dataclasses.replace(q, votes=r.votes, majority=r.majority, agreement=round(r.agreement, 6), n_valid=r.n_valid)
               for q, r in zip(questions, results, strict=True) if r.kept]
    write_jsonl(out_path, labeled)
    counts = count_statuses(results)
    # reliability uses Eq. 3 as is (seeded ties, no agreement filter): the quality of the label itself
    real_results = [majority_vote(votes[it.key], it.key, cfg.seed, "seeded", 0.0) for it in items_real]
    reliability = reliability_table(real, real_results, seed=cfg.seed)

    kept_agreements = [r.agreement for r in results if r.kept]
    finish: dict[str, int] = {}
    for comps in samples.values():
        for c in comps:
            finish[c.finish_reason] = finish.get(c.finish_reason, 0) + 1
    report: dict[str, Any] = {
        "questions": len(questions), "kept": counts["kept"], **{key: counts[status] for status, key in DROP_KEYS.items()},
        "agreement_mean": (sum(kept_agreements) / len(kept_agreements)) if kept_agreements else 0.0,
        "agreement_definition": "winner's votes / G (all G samples, not only valid ones); mean over kept questions",
        "agreement_histogram": {f"{k}/{sampling.n}": sum(1 for r in results if r.n_valid and round(r.agreement * sampling.n) == k)
                                for k in range(1, sampling.n + 1)},
        # questions per agreement k/G before the filters and after them (k = 0: no valid vote); also plot_data_path
        "agreement_band_histogram": band_histogram(results, sampling.n),
        "valid_vote_rate": (sum(r.n_valid for r in results) / (len(results) * sampling.n)) if results else 0.0,
        "reliability": reliability,
        "sampling": dataclasses.asdict(sampling), "sampling_dtype": spec.sampling_dtype, "ties": cfg.ties, "min_agreement": cfg.min_agreement,
        "max_agreement": cfg.max_agreement, "seed": cfg.seed,
        "model_dir": model_dir, "prompt": {"name": PROMPT_NAME, "version": template.version, "sha256": template.sha256},
        "prompt_format": rec,
        "finish_reasons": finish,
        "timing": {"sampled_questions": stats.sampled, "resumed_questions": stats.resumed,
                   "votes": stats.samples, "tokens": stats.tokens, "seconds": round(stats.seconds, 3),
                   "votes_per_s": (stats.samples / stats.seconds) if stats.seconds else 0.0,
                   "tokens_per_s": (stats.tokens / stats.seconds) if stats.seconds else 0.0},
        "progress": {"quarantined_lines": stats.quarantined, "torn_tail": stats.torn_tail,
                     "quarantine_files": stats.quarantine_files},
        "out": str(out_path),
    }
    write_json_atomic(report_path, report)
    _plot(Path(plot_path), [r.agreement for r in results], [r.status for r in results], sampling.n, reliability,
          (cfg.min_agreement, cfg.max_agreement))
    if plot_data_path is not None:
        write_json_atomic(plot_data_path, report["agreement_band_histogram"])
    if track:
        _log(params, model_dir, report, report_path, plot_path)
    return report


def label_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The report's numbers under their stable MLflow names (``label/...``)."""
    from medssr.metric_names import label_bucket_metric, metric

    m = {metric("label", k): float(report[k]) for k in ("kept", *DROP_KEYS.values(), "agreement_mean")}
    m[metric("label", "votes_per_s")] = float(report["timing"]["votes_per_s"])
    m[metric("label", "tokens_per_s")] = float(report["timing"]["tokens_per_s"])
    m[metric("label", "valid_vote_rate")] = float(report["valid_vote_rate"])
    rel = report["reliability"]
    if rel.get("n"):
        for name in ("majority_acc", "single_acc", "pass_at_g", "majority_ratio"):
            m[metric("label", f"reliability/{name}")] = float(rel[name])
            m[metric("label", f"reliability/{name}_ci_low")], m[metric("label", f"reliability/{name}_ci_high")] = map(float, rel[f"{name}_ci"])
        for b in rel["buckets"]:
            m[label_bucket_metric(b["lo"], b["hi"], "n")] = float(b["n"])
            if b["majority_acc"] is not None:
                m[label_bucket_metric(b["lo"], b["hi"], "acc")] = float(b["majority_acc"])
    return m


def _log(params: Params, model_dir: str, report: dict[str, Any], report_path, plot_path) -> None:
    from medssr.tracking import log_summary_to_parent, stage_run

    metrics = label_metrics(report)
    with stage_run("label", params, label_section(params, model_dir, report.get("prompt_format"))) as mlflow:
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(report_path))
        mlflow.log_artifact(str(plot_path))
    log_summary_to_parent(params, metrics)  # it copies the headline ones (metric_names.HEADLINE_METRICS)


def summary_line(report: dict[str, Any]) -> str:
    """The one line the stage prints at the end."""
    rel = report["reliability"]
    rel_txt = (f"; reliability on {rel['n']} real: majority {_pct(rel, 'majority_acc')} vs single {_pct(rel, 'single_acc')}, "
               f"pass@{rel['g']} {_pct(rel, 'pass_at_g')}, majority ratio {rel['majority_ratio']:.2f} "
               f"[{rel['majority_ratio_ci'][0]:.2f}, {rel['majority_ratio_ci'][1]:.2f}]" if rel.get("n") else "")
    t = report["timing"]
    return (f"[label] kept {report['kept']}/{report['questions']} (no valid {report['dropped_no_valid']}, ties {report['dropped_ties']}, "
            f"low agreement {report['dropped_low_agreement']}, too easy {report['dropped_high_agreement']}), mean agreement {report['agreement_mean']:.2f}{rel_txt}; "
            f"{t['votes']} votes in {t['seconds']:.0f}s ({t['votes_per_s']:.2f}/s in {report.get('sampling_dtype', '?')}, "
            f"{t['resumed_questions']} questions resumed"
            f"{_quarantine_note(report.get('progress', {}))}) -> {report['out']}")


def _pct(rel: dict[str, Any], name: str) -> str:
    lo, hi = rel[f"{name}_ci"]
    return f"{rel[name]:.1%} [{lo:.1%}, {hi:.1%}]"


def _quarantine_note(progress: dict[str, Any]) -> str:
    n = progress.get("quarantined_lines", 0)
    if not n:
        return ""
    return f", {n} damaged progress line{'s' if n != 1 else ''} quarantined to {', '.join(progress['quarantine_files'])}"


__all__ = ["LabelError", "STATUSES", "band_histogram", "run_label", "reliability_sample", "reliability_table", "summary_line",
           "label_metrics", "progress_path_for"]
