"""k samples per question, resumable: the one loop behind the label stage's votes and the evaluation's runs.

Both stages draw k completions for every question of a list and must survive a kill: each question's k outputs are
appended (fsync'd) to a progress file as soon as they are complete, and a later run reuses the rows whose
fingerprint and prompt match. This module owns what that needs, so the two stages cannot drift apart:

- the fingerprint of everything besides the prompt that decides a question's samples (``RolloutSpec``);
- the progress row (``[text, n_tokens, finish_reason]`` per sample, read back as ``Completion``s; each stage
  extracts its answers on load) and the rule for a complete one;
- the chunking rule: questions go to the sampler in fixed chunks of each group (the eval's benchmarks) in the given
  order. Where the batch composition moves the floats (the hf backend, ``medssr.sampling``) an unfinished chunk is
  sampled again whole, so a resumed run sees every question in the same company as an uninterrupted one and gives
  the same numbers; where samples depend on their seeds alone (vLLM) only a chunk's missing questions are sampled.
Damaged progress lines are quarantined by ``medssr.records.read_partial_jsonl`` and their questions sampled again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medssr.config import SamplingCfg
from medssr.records import append_jsonl, read_partial_jsonl
from medssr.sampling import Completion, resolve_sampling_dtype

DEFAULT_CHUNK = 32  # questions per vLLM chunk at least: short enough that a kill loses little, long enough to fill the engine

# Knobs that change throughput, not the samples (keys seed them): a resume on more or fewer engines keeps them.
SCALE_KNOBS = ("engines", "tensor_parallel_size", "enable_prefix_caching", "gpu_memory_utilization", "max_model_len")


def composition_matters(sampling: SamplingCfg) -> bool:
    """Whether a question's samples depend on the other prompts of its call: hf's floats move with the batch
    composition (medssr.sampling), vLLM's samples depend on their seeds alone."""
    return sampling.backend == "hf"


def chunk_size_for(sampling: SamplingCfg, k: int) -> int:
    """Questions per sampler call for k samples each. hf: what one batch holds at once (ceil(batch_size / k)); with
    several engines each chunk runs whole on one engine as engines come free (``ShardedSampler.run_queue``), so a
    chunk's floats are the same on any number of engines; since an unfinished chunk is sampled again whole, a kill
    loses at most the questions in flight. vLLM (one ``generate`` per call, a question's samples fixed by its seeds):
    two full batches of sequences per engine, split between the engines, so a chunk's tail stays short."""
    if composition_matters(sampling):
        # the price, measured on SmolLM2-135M (32 questions, G = 8, batch 32, 2 threads): 0.76 votes/s against 1.03
        # with chunks of 32, since each chunk's batch drains to its longest row; a kill then lost 11 finished
        # questions on average (up to 31), now 0.1. Two chunk sizes gave different samples (float rounding).
        return -(-sampling.batch_size // k)
    return max(DEFAULT_CHUNK, -(-2 * sampling.batch_size // k)) * sampling.engines


@dataclass(frozen=True)
class RolloutSpec:
    """Everything besides the prompt that decides a question's k samples, and how questions are grouped into calls.

    ``chunk``: questions per sampler call, or None for one call per group. hf runs each call whole on one engine,
    vLLM splits it between its engines."""

    sampling: SamplingCfg
    k: int
    seed: int
    weights: str = ""  # medssr.models.weights_fingerprint: the weights by content, not by path or mtime
    dtype: str = "float32"  # model.dtype; the samples are decided by sampling_dtype (sampling.dtype resolved against it)
    template: str = ""  # hash of the prompt template the questions are rendered with
    chat_template: bool = True  # whether the sampler wraps the prompt in the model's chat template
    chunk: int | None = None

    @property
    def sampling_dtype(self) -> str:
        """The dtype the samples are computed in (``medssr.sampling.resolve_sampling_dtype``, as ``make_sampler``)."""
        return resolve_sampling_dtype(self.sampling, self.dtype)

    def fingerprint(self) -> str:
        """Changes whenever a saved sample could differ. The batch composition counts only where it moves the floats
        (hf): batch rows and the questions of one call, which runs whole on one engine (``rollout``), so a resume on
        another number of engines keeps the samples. (The names below are those of the per-engine share
        before #16.4, when an hf call was split between the engines: progress files of one engine stay valid.)
        The dtype is the resolved sampling dtype (``sampling.dtype: auto`` differs by machine), under the key that
        held model.dtype before sampling.dtype existed, so float32 progress files of then are still resumed; model.dtype
        joins it only where the two differ (it does not move the samples: a conservative split that costs a resample
        only when model.dtype changes)."""
        s = self.sampling
        decoding = {k: v for k, v in dataclasses.asdict(s).items() if k not in (*SCALE_KNOBS, "n", "batch_size", "dtype")}
        composition = None
        if composition_matters(s):
            composition = {"batch_size": s.batch_size, "per_engine": "group/1" if self.chunk is None else self.chunk}
        dtype = self.sampling_dtype
        blob = json.dumps({"weights": self.weights, "dtype": dtype, "decoding": decoding, "k": self.k, "seed": self.seed,
                           "template": self.template, "chat_template": self.chat_template, "composition": composition,
                           **({"model_dtype": self.dtype} if self.dtype != dtype else {})},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Item:
    """One question to sample: ``key`` names its random streams and its progress row."""

    key: str
    prompt: str
    options: Mapping[str, str]


@dataclass
class RolloutStats:
    """This run's work only: ``resumed`` questions came from the progress file; ``sampled`` ones went to the sampler
    (with hf, the finished questions of an unfinished chunk too, for its composition)."""

    resumed: int = 0
    sampled: int = 0
    samples: int = 0
    tokens: int = 0
    seconds: float = 0.0
    quarantined: int = 0  # damaged progress lines set aside (medssr.records.read_partial_jsonl)
    torn_tail: int = 0
    quarantine_files: list[str] = field(default_factory=list)

    def add(self, other: RolloutStats) -> None:
        for f in ("resumed", "sampled", "samples", "tokens", "seconds", "quarantined", "torn_tail"):
            setattr(self, f, getattr(self, f) + getattr(other, f))
        self.quarantine_files += [f for f in other.quarantine_files if f not in self.quarantine_files]


def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode()).hexdigest()[:16]


def progress_row(fingerprint: str, item: Item, completions: Sequence[Completion]) -> dict[str, Any]:
    """One question's k samples as a progress line: raw outputs, so extraction rules can change without resampling."""
    return {"key": item.key, "fp": fingerprint, "prompt": prompt_hash(item.prompt),
            "outputs": [[c.text, c.n_tokens, c.finish_reason] for c in completions]}


def is_complete(row: Mapping[str, Any], k: int) -> bool:
    """A row with all k outputs, each ``[text, n_tokens, finish_reason]``; anything else (another k, a row cut by
    hand, the per-stage formats before this module) is sampled again."""
    outs = row.get("outputs")
    return isinstance(row.get("key"), str) and isinstance(outs, list) and len(outs) == k and all(
        isinstance(o, list) and len(o) == 3 and isinstance(o[0], str) and isinstance(o[1], int) and isinstance(o[2], str)
        for o in outs)


def progress_path_for(out_path: str | os.PathLike) -> Path:
    """The progress file of a stage output, beside it (rows of any fingerprint; the ones that match are used)."""
    out = Path(out_path)
    return out.with_name(f".{out.name.removesuffix('.jsonl')}.progress.jsonl")


def cache_path_for(cache_dir: str | os.PathLike, name: str, spec: RolloutSpec) -> Path:
    """A progress file shared by every run with the same spec (a sweep's unchanged model, a DVC queue copy)."""
    return Path(cache_dir) / f"{name}-{spec.fingerprint()}.jsonl"


def _chunks(total: int, size: int | None, groups: Sequence[int] | None) -> list[range]:
    """Fixed slices of ``size`` questions within each group of consecutive questions (one slice per group for None)."""
    out, start = [], 0
    for n in groups if groups is not None else [total]:
        step = size or max(n, 1)
        out += [range(c, min(c + step, start + n)) for c in range(start, start + n, step)]
        start += n
    if start != total:
        raise ValueError(f"groups cover {start} questions, expected {total}")
    return out


def _sample_chunk(sampler: Any, spec: RolloutSpec, fp: str, todo: list[Item], progress_file: str | os.PathLike | None,
                  done: dict[str, list[Completion]], stats: RolloutStats, advance: Callable[[int], Any],
                  lock: Any = contextlib.nullcontext()) -> None:
    """One sampler call; each question is saved (once) as soon as its k samples are reported. ``lock`` guards the
    shared state when chunks run on several engines at once."""
    reported: set[int] = set()

    def finished(local: int, comps: list[Completion]) -> None:
        with lock:
            reported.add(local)
            it = todo[local]
            stats.samples += len(comps)
            stats.tokens += sum(x.n_tokens for x in comps)
            stats.sampled += 1
            if it.key in done:  # saved before, sampled again for its chunk's composition: the same samples
                return
            if progress_file is not None:
                append_jsonl(progress_file, progress_row(fp, it, comps))
            done[it.key] = list(comps)
            advance(1)

    s = spec.sampling
    results = sampler.sample([it.prompt for it in todo], n=spec.k, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                             max_new_tokens=s.max_new_tokens, options=[it.options for it in todo], seed=spec.seed, progress=False,
                             keys=[it.key for it in todo], stop_at_answer=s.stop_at_answer, on_prompt_done=finished)
    for local, comps in enumerate(results):  # a sampler that reports nothing per prompt is still complete
        if local not in reported:
            finished(local, comps)


def rollout(sampler: Any, spec: RolloutSpec, items: Sequence[Item], progress_file: str | os.PathLike | None, *,
            groups: Sequence[int] | None = None, progress: bool = True, desc: str = "sampling",
            on_chunk: Callable[[int], None] | None = None) -> tuple[dict[str, list[Completion]], RolloutStats]:
    """k completions for every item, resuming from ``progress_file`` (None: nothing saved); by key, and this run's stats.

    ``groups``: sizes of consecutive runs of items that never share a sampler call (the eval's benchmarks); chunks
    of ``spec.chunk`` are cut within each. ``on_chunk(i)`` is called after chunk i is sampled."""
    fp = spec.fingerprint()
    want = {it.key: prompt_hash(it.prompt) for it in items}
    done: dict[str, list[Completion]] = {}
    stats = RolloutStats()
    if progress_file is not None:
        rows = read_partial_jsonl(progress_file)
        for row in rows:
            key = row.get("key")
            if row.get("fp") == fp and key in want and row.get("prompt") == want[key] and is_complete(row, spec.k):
                done[key] = [Completion(*o) for o in row["outputs"]]
        stats.quarantined, stats.torn_tail = rows.quarantined, rows.torn_tail
        stats.quarantine_files = [str(rows.side_file)] if rows.side_file else []
    whole_chunks = composition_matters(spec.sampling)
    work = []
    for c, idx in enumerate(_chunks(len(items), spec.chunk, groups)):
        todo = [items[i] for i in idx if items[i].key not in done]
        if todo and whole_chunks:
            todo = [items[i] for i in idx]  # its finished questions are sampled again for the composition
        stats.resumed += len(idx) - len(todo)
        if todo:
            work.append((c, todo))
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    with tqdm(total=len(items), initial=sum(it.key in done for it in items), desc=desc, unit="question", disable=not progress) as bar:
        if whole_chunks and callable(getattr(sampler, "run_queue", None)) and len(work) > 1:
            # several hf engines: each chunk whole on the next free engine (its batches as on one engine)
            lock = threading.RLock()

            def job(engine: Any, c: int, todo: list[Item]) -> None:
                _sample_chunk(engine, spec, fp, todo, progress_file, done, stats, bar.update, lock)
                if on_chunk is not None:
                    with lock:
                        on_chunk(c)

            sampler.run_queue([functools.partial(job, c=c, todo=todo) for c, todo in work])
        else:
            for c, todo in work:
                _sample_chunk(sampler, spec, fp, todo, progress_file, done, stats, bar.update)
                if on_chunk is not None:
                    on_chunk(c)
    stats.seconds += time.perf_counter() - t0 if work else 0.0
    return done, stats
