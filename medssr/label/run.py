"""The `label` stage: the policy votes G times on every synthetic question; the majority becomes its label.

Prompt: F.4 (``prompts/eval_f4.txt``), the same prompt evaluation uses, with the question rendered by
``Question.render()``; sampling settings from ``label.sampling`` (paper C.2: G = 8, T = 1.0, top-p 1.0, top-k -1).

Resumable and reproducible: each question's G samples draw from their own random streams seeded by
``(label.seed, question id, sample index)``, and each question's votes are appended (fsync'd) to
``<out dir>/.<out stem>.progress.jsonl`` as soon as its G samples are complete; rows whose prompt, model or
sampling settings differ are ignored, damaged lines are quarantined beside the file (``medssr.records``) and
their questions voted again. Questions go to the sampler in fixed chunks of the input order. With hf, whose floats
move with the batch composition, a chunk is what one batch holds at once (ceil(batch_size / G) questions) and an
unfinished chunk is re-sampled whole with the same composition, so a kill loses at most the questions in flight;
with vLLM, whose samples depend on their seeds alone, only a chunk's missing questions are sampled. The final file
is written atomically in input order, byte-identical to an uninterrupted run.

The label's reliability is measured the same way on ``label.reliability_n`` real benchmark questions with gold
answers: majority-vote accuracy vs single-sample accuracy, by agreement bucket.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medssr.answers import extract_answer
from medssr.config import Params, SamplingCfg, to_flat_dict
from medssr.errors import MedssrError
from medssr.label.vote import STATUSES, VoteResult, agreement_bucket, count_statuses, majority_vote
from medssr.models import weights_fingerprint
from medssr.records import Question, append_jsonl, read_partial_jsonl, read_questions, write_jsonl

PROMPT_NAME = "eval_f4"
BUCKETS = (0.0, 0.5, 0.75, 1.0)
DEFAULT_CHUNK = 32  # questions per chunk for a caller that names none


def composition_matters(sampling: SamplingCfg) -> bool:
    """Whether a question's samples depend on the other prompts of its call: hf's floats move with the batch
    composition (medssr.sampling), vLLM's samples depend on their seeds alone."""
    return sampling.backend == "hf"


def chunk_size_for(sampling: SamplingCfg) -> int:
    """Questions per chunk. hf: what its batches hold at once (ceil(batch_size / G) per engine, so each engine's
    share, and so its floats, is the same on any number of engines); since an unfinished chunk is re-sampled
    whole, a kill loses at most the questions in flight. vLLM (one ``generate`` per call, a question's samples
    fixed by its seeds): two full batches of sequences per engine, so a chunk's tail stays short."""
    if composition_matters(sampling):
        # the price, measured on SmolLM2-135M (32 questions, G = 8, batch 32, 2 threads): 0.76 votes/s against 1.03
        # with chunks of 32, since each chunk's batch drains to its longest row; a kill then lost 11 finished
        # questions on average (up to 31), now 0.1. Two chunk sizes gave different samples (float rounding).
        return -(-sampling.batch_size // sampling.n) * sampling.engines
    return max(DEFAULT_CHUNK, -(-2 * sampling.batch_size // sampling.n)) * sampling.engines


class LabelError(MedssrError, ValueError):
    """The label stage cannot run; the message names the file or param to fix."""


@dataclass
class Voted:
    """One question's votes as stored in the progress file."""

    key: str
    votes: list[str | None]
    n_tokens: list[int]
    finish: list[str]


def progress_path_for(out_path: str | os.PathLike) -> Path:
    out = Path(out_path)
    return out.with_name(f".{out.name.removesuffix('.jsonl')}.progress.jsonl")


# Knobs that change throughput, not the samples (keys seed them): a resume on more or fewer engines keeps the votes.
SCALE_KNOBS = ("engines", "tensor_parallel_size", "enable_prefix_caching", "gpu_memory_utilization", "max_model_len")


def run_fingerprint(model_fp: str, sampling: SamplingCfg, seed: int, chunk_size: int) -> str:
    """Everything besides the prompt that decides a question's samples. The chunk counts only for hf (batch
    composition moves its floats), as the questions each engine gets at once; vLLM's depend on their seeds alone."""
    decoding = {k: v for k, v in dataclasses.asdict(sampling).items() if k not in SCALE_KNOBS}
    per_engine = chunk_size // sampling.engines if chunk_size % sampling.engines == 0 else f"{chunk_size}/{sampling.engines}"
    blob = json.dumps({"model": model_fp, "sampling": decoding, "seed": seed,
                       "chunk": per_engine if composition_matters(sampling) else None}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode()).hexdigest()[:16]


def vote_questions(sampler: Any, keys: Sequence[str], questions: Sequence[Question], prompts: Sequence[str], sampling: SamplingCfg,
                   seed: int, progress_file: Path, fingerprint: str, chunk_size: int = DEFAULT_CHUNK, progress: bool = True,
                   on_chunk: Callable[[int], None] | None = None, desc: str = "label votes") -> tuple[dict[str, Voted], dict[str, Any]]:
    """G votes for every question, resuming from ``progress_file``; returns votes by key and this run's stats.

    Each question's row is appended as soon as its G votes are complete. Chunks are fixed slices of the given
    order; where the batch composition moves the floats (hf) an unfinished chunk is re-sampled whole (same
    composition, same numbers) and only its missing questions are appended, elsewhere only the missing questions
    are sampled. The stats count work done in this run only: ``resumed`` questions were not sampled again.
    """
    want = {k: _prompt_hash(p) for k, p in zip(keys, prompts, strict=True)}
    done: dict[str, Voted] = {}
    rows = read_partial_jsonl(progress_file)
    for row in rows:
        k = row.get("key")
        if row.get("fp") == fingerprint and k in want and row.get("prompt") == want[k] and _complete(row, sampling.n):
            done[k] = Voted(k, row["votes"], row["n_tokens"], row["finish"])
    stats: dict[str, Any] = {"votes": 0, "tokens": 0, "seconds": 0.0, "resumed": 0, "sampled_questions": 0,
                             "quarantined": rows.quarantined, "torn_tail": rows.torn_tail,
                             "quarantine_files": [str(rows.side_file)] if rows.side_file else []}
    whole_chunks = composition_matters(sampling)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(keys), initial=sum(k in done for k in keys), desc=desc, unit="question", disable=not progress)
    for c0 in range(0, len(keys), chunk_size):
        idx = list(range(c0, min(c0 + chunk_size, len(keys))))
        todo = [i for i in idx if keys[i] not in done]
        if todo and whole_chunks:
            todo = idx  # its finished questions are sampled again for the composition (and not appended twice)
        stats["resumed"] += len(idx) - len(todo)
        if not todo:
            continue

        def finished(local: int, comps: list, todo: list[int] = todo) -> None:
            i = todo[local]
            stats["votes"] += len(comps)
            stats["tokens"] += sum(c.n_tokens for c in comps)
            stats["sampled_questions"] += 1
            if keys[i] in done:
                return
            # a cut-off last line is unfinished, not a vote (same rule as the evaluation)
            v = Voted(keys[i], [extract_answer(c.text, questions[i].options, c.finish_reason != "length") for c in comps],
                      [c.n_tokens for c in comps], [c.finish_reason for c in comps])
            append_jsonl(progress_file, {"key": v.key, "fp": fingerprint, "prompt": want[v.key], "votes": v.votes,
                                         "n_tokens": v.n_tokens, "finish": v.finish})
            done[v.key] = v
            bar.update(1)

        t0 = time.perf_counter()
        sampler.sample([prompts[i] for i in todo], n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                       top_k=sampling.top_k, max_new_tokens=sampling.max_new_tokens, options=[questions[i].options for i in todo],
                       seed=seed, progress=False, keys=[keys[i] for i in todo], stop_at_answer=sampling.stop_at_answer,
                       on_prompt_done=finished)
        stats["seconds"] += time.perf_counter() - t0
        if on_chunk is not None:
            on_chunk(c0 // chunk_size)
    bar.close()
    return done, stats


def _complete(row: dict, n: int) -> bool:
    """A progress row with all G votes (a row of another G, or cut short by hand, is voted again)."""
    return all(isinstance(row.get(f), list) and len(row[f]) == n for f in ("votes", "n_tokens", "finish"))


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


def reliability_table(questions: Sequence[Question], results: Sequence[VoteResult], edges: Sequence[float] = BUCKETS) -> dict[str, Any]:
    """Majority-label accuracy vs single-sample accuracy, overall and per agreement bucket (no answer counts as wrong)."""
    n = len(questions)
    if n == 0:
        return {"n": 0}
    maj = [r.majority == q.answer for q, r in zip(questions, results, strict=True)]
    single = [r.votes[0] == q.answer for q, r in zip(questions, results, strict=True)]
    buckets = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        members = [i for i, r in enumerate(results) if agreement_bucket(r.agreement, edges) == (lo, hi)]
        buckets.append({"lo": lo, "hi": hi, "n": len(members),
                        "majority_acc": (sum(maj[i] for i in members) / len(members)) if members else None,
                        "single_acc": (sum(single[i] for i in members) / len(members)) if members else None})
    return {"n": n, "majority_acc": sum(maj) / n, "single_acc": sum(single) / n, "buckets": buckets,
            "no_valid": sum(r.n_valid == 0 for r in results)}


def label_section(params: Params, model_dir: str) -> dict[str, Any]:
    """The flat params the label stage depends on (logged on its MLflow run)."""
    flat = {f"label.{k}": v for k, v in to_flat_dict(params.label).items()}
    flat["model.dir"] = model_dir
    return flat


def _plot(path: Path, agreements: Sequence[float], statuses: Sequence[str], g: int, reliability: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    xs = [k / g for k in range(g + 1)]
    kept = [sum(1 for a, s in zip(agreements, statuses, strict=True) if s == "kept" and round(a * g) == k) for k in range(g + 1)]
    dropped = [sum(1 for a, s in zip(agreements, statuses, strict=True) if s != "kept" and round(a * g) == k) for k in range(g + 1)]
    w = 0.8 / g
    axes[0].bar(xs, kept, width=w, label="kept", color="tab:blue")
    axes[0].bar(xs, dropped, width=w, bottom=kept, label="dropped", color="tab:gray")
    axes[0].set_xlabel(f"agreement (winner's votes / G, G={g})")
    axes[0].set_ylabel("synthetic questions")
    axes[0].set_title("Pseudo-label agreement")
    axes[0].legend()
    ax = axes[1]
    if reliability.get("n"):
        bs = reliability["buckets"]
        labels = [f"[{b['lo']:g},{b['hi']:g}{']' if b['hi'] == BUCKETS[-1] else ')'}\nn={b['n']}" for b in bs]
        ax.bar(range(len(bs)), [b["majority_acc"] or 0 for b in bs], width=0.4, label="majority", color="tab:blue")
        ax.bar([i + 0.4 for i in range(len(bs))], [b["single_acc"] or 0 for b in bs], width=0.4, label="single sample", color="tab:orange")
        ax.set_xticks([i + 0.2 for i in range(len(bs))], labels)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy vs gold")
        ax.set_title(f"Reliability on {reliability['n']} real questions")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "reliability not measured", ha="center", va="center")
        ax.set_axis_off()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def _metric_key(lo: float, hi: float) -> str:
    return f"reliability/bucket_{lo:g}_{hi:g}_acc"


def run_label(params: Params, model_dir: str | os.PathLike, synthetic_path: str | os.PathLike, benchmarks_dir: str | os.PathLike,
              out_path: str | os.PathLike, report_path: str | os.PathLike, plot_path: str | os.PathLike, *, sampler: Any = None,
              chunk_size: int | None = None, progress: bool = True, track: bool = True,
              on_chunk: Callable[[int], None] | None = None, reliability_cache: str | os.PathLike | None = None) -> dict[str, Any]:
    """Vote on every synthetic question, write the labeled set, the report, the plot, and log them to MLflow.

    ``reliability_cache`` (a directory) keeps the votes on real questions after the run, keyed by the weights'
    content, decoding, seed and prompt: they do not depend on the synthetic set, so every value of a sweep reuses
    them. Without it they live in the stage's own progress file."""
    from medssr.synth.prompts import load_prompt

    cfg = params.label
    sampling = cfg.sampling
    model_dir = str(model_dir)
    questions = read_questions(synthetic_path)  # RecordError names file:line: field
    if not Path(model_dir).exists():
        raise LabelError(f"{model_dir}: policy model directory not found (run the `model` stage or set model.dir)")
    real = reliability_sample(benchmarks_dir, cfg.reliability_n, cfg.seed)
    template = load_prompt(PROMPT_NAME)
    if sampler is None:
        from medssr.sampling import make_sampler

        sampler = make_sampler(model_dir, backend=sampling.backend, dtype=params.model.dtype, batch_size=sampling.batch_size, seed=cfg.seed,
                               sampling=sampling)
    if chunk_size is None:
        chunk_size = chunk_size_for(sampling)
    fp = run_fingerprint(weights_fingerprint(model_dir), sampling, cfg.seed, chunk_size) + ":" + template.hash
    prog = progress_path_for(out_path)

    items_syn = [(q.id, q) for q in questions]
    items_real = [(f"real:{q.source}:{q.id}", q) for q in real]
    all_stats: dict[str, Any] = {"votes": 0, "tokens": 0, "seconds": 0.0, "resumed": 0, "sampled_questions": 0, "quarantined": 0,
                                 "torn_tail": 0, "quarantine_files": []}
    voted: dict[str, Voted] = {}
    real_prog = prog if reliability_cache is None else Path(reliability_cache) / f"{hashlib.sha256(fp.encode()).hexdigest()[:16]}.jsonl"
    for items, desc, path in ((items_syn, "voting on synthetic", prog), (items_real, "voting on real (reliability)", real_prog)):
        if not items:
            continue
        keys = [k for k, _ in items]
        qs = [q for _, q in items]
        got, st = vote_questions(sampler, keys, qs, [template.render(question=q.render()) for q in qs], sampling, cfg.seed, path, fp,
                                 chunk_size, progress, on_chunk, desc)
        voted.update(got)
        for k in all_stats:
            all_stats[k] += st[k] if k != "quarantine_files" else [f for f in st[k] if f not in all_stats[k]]

    results = [majority_vote(voted[q.id].votes, q.id, cfg.seed, cfg.ties, cfg.min_agreement) for q in questions]
    labeled = [dataclasses.replace(q, votes=r.votes, majority=r.majority, agreement=round(r.agreement, 6), n_valid=r.n_valid)
               for q, r in zip(questions, results, strict=True) if r.kept]
    write_jsonl(out_path, labeled)
    counts = count_statuses(results)
    # reliability uses Eq. 3 as is (seeded ties, no agreement filter): the quality of the label itself
    real_results = [majority_vote(voted[k].votes, k, cfg.seed, "seeded", 0.0) for k, _ in items_real]
    reliability = reliability_table(real, real_results)

    kept_agreements = [r.agreement for r in results if r.kept]
    finish: dict[str, int] = {}
    for k in voted:
        for f in voted[k].finish:
            finish[f] = finish.get(f, 0) + 1
    report: dict[str, Any] = {
        "questions": len(questions), "kept": counts["kept"], "dropped_no_valid": counts["no_valid"], "dropped_ties": counts["tie"],
        "dropped_low_agreement": counts["low_agreement"],
        "agreement_mean": (sum(kept_agreements) / len(kept_agreements)) if kept_agreements else 0.0,
        "agreement_definition": "winner's votes / G (all G samples, not only valid ones); mean over kept questions",
        "agreement_histogram": {f"{k}/{sampling.n}": sum(1 for r in results if r.n_valid and round(r.agreement * sampling.n) == k)
                                for k in range(1, sampling.n + 1)},
        "valid_vote_rate": (sum(r.n_valid for r in results) / (len(results) * sampling.n)) if results else 0.0,
        "reliability": reliability,
        "sampling": dataclasses.asdict(sampling), "ties": cfg.ties, "min_agreement": cfg.min_agreement, "seed": cfg.seed,
        "model_dir": model_dir, "prompt": {"name": PROMPT_NAME, "version": template.version, "sha256": template.sha256},
        "finish_reasons": finish,
        "timing": {"sampled_questions": all_stats["sampled_questions"], "resumed_questions": all_stats["resumed"],
                   "votes": all_stats["votes"], "tokens": all_stats["tokens"], "seconds": round(all_stats["seconds"], 3),
                   "votes_per_s": (all_stats["votes"] / all_stats["seconds"]) if all_stats["seconds"] else 0.0,
                   "tokens_per_s": (all_stats["tokens"] / all_stats["seconds"]) if all_stats["seconds"] else 0.0},
        "progress": {"quarantined_lines": all_stats["quarantined"], "torn_tail": all_stats["torn_tail"],
                     "quarantine_files": all_stats["quarantine_files"]},
        "out": str(out_path),
    }
    Path(report_path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(report_path) + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, report_path)
    _plot(Path(plot_path), [r.agreement for r in results], [r.status for r in results], sampling.n, reliability)
    if track:
        _log(params, model_dir, report, report_path, plot_path)
    return report


def label_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The report's numbers under their stable MLflow names (``label/...``)."""
    from medssr.tracking import metric

    m = {metric("label", k): float(report[k]) for k in ("kept", "dropped_no_valid", "dropped_ties", "dropped_low_agreement", "agreement_mean")}
    m[metric("label", "votes_per_s")] = float(report["timing"]["votes_per_s"])
    m[metric("label", "tokens_per_s")] = float(report["timing"]["tokens_per_s"])
    m[metric("label", "valid_vote_rate")] = float(report["valid_vote_rate"])
    rel = report["reliability"]
    if rel.get("n"):
        m[metric("label", "reliability/majority_acc")] = float(rel["majority_acc"])
        m[metric("label", "reliability/single_acc")] = float(rel["single_acc"])
        for b in rel["buckets"]:
            m[metric("label", f"reliability/bucket_{b['lo']:g}_{b['hi']:g}_n")] = float(b["n"])
            if b["majority_acc"] is not None:
                m[metric("label", _metric_key(b["lo"], b["hi"]))] = float(b["majority_acc"])
    return m


def _log(params: Params, model_dir: str, report: dict[str, Any], report_path, plot_path) -> None:
    from medssr.tracking import log_summary_to_parent, metric, stage_run

    metrics = label_metrics(report)
    with stage_run("label", params, label_section(params, model_dir)) as mlflow:
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(report_path))
        mlflow.log_artifact(str(plot_path))
    headline = [metric("label", "kept"), metric("label", "agreement_mean"), metric("label", "reliability/majority_acc")]
    log_summary_to_parent(params, {k: metrics[k] for k in headline if k in metrics})


def summary_line(report: dict[str, Any]) -> str:
    """The one line the stage prints at the end."""
    rel = report["reliability"]
    rel_txt = (f"; reliability on {rel['n']} real: majority {rel['majority_acc']:.1%} vs single {rel['single_acc']:.1%}"
               if rel.get("n") else "")
    t = report["timing"]
    return (f"[label] kept {report['kept']}/{report['questions']} (no valid {report['dropped_no_valid']}, ties {report['dropped_ties']}, "
            f"low agreement {report['dropped_low_agreement']}), mean agreement {report['agreement_mean']:.2f}{rel_txt}; "
            f"{t['votes']} votes in {t['seconds']:.0f}s ({t['votes_per_s']:.2f}/s, {t['resumed_questions']} questions resumed"
            f"{_quarantine_note(report.get('progress', {}))}) -> {report['out']}")


def _quarantine_note(progress: dict[str, Any]) -> str:
    n = progress.get("quarantined_lines", 0)
    if not n:
        return ""
    return f", {n} damaged progress line{'s' if n != 1 else ''} quarantined to {', '.join(progress['quarantine_files'])}"


__all__ = ["LabelError", "STATUSES", "run_label", "vote_questions", "reliability_sample", "reliability_table", "summary_line",
           "label_metrics", "progress_path_for"]
