"""Declared benchmarks -> questions, and per-model-family decoding settings.

Benchmarks are data: params ``eval.benchmarks`` maps a name to a file, and any file in one of the shapes below
works without new Python:

* a JSON list in the MedSSR test format (``id``, ``question`` with ``\\nA. ...`` option lines, ``gold``), gz or plain;
* JSONL of our Question records (what the prepare stage writes: data/prepared/benchmarks/<name>.jsonl);
* JSONL of raw benchmark rows (``id``, ``question`` with options inline, ``gold``).

The shape is read from the content (first non-blank character ``[`` = JSON list), not from the name.
With ``eval.benchmarks`` empty, every benchmark declared under ``data.benchmarks`` is evaluated from its prepared
file, plus RareDis-Sub (``eval_benchmarks``). A rare-disease set (a name starting ``raredis``) is sliced stratified
by category (``stratified_slice``), so a small sample still covers every category.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medssr.config import RESERVED_BENCHMARK_NAMES, SamplingCfg, benchmark_name_problem
from medssr.data.loaders import benchmark_row_to_question, load_benchmark_file
from medssr.errors import MedssrError
from medssr.records import CATEGORIES, Question, RecordError, iter_jsonl, validate_question

# Each model's recommended decoding (paper §4.1 "recommended decoding hyperparameters for each model").
# qwen: Qwen3 model card (thinking mode) and MedSSR's own evaluator; llama: Llama-3.1-Instruct generation_config.json;
# smollm: SmolLM2-Instruct model card example. Used when eval.family_defaults is true.
FAMILY_SAMPLING: dict[str, dict[str, float | int]] = {
    "qwen": {"temperature": 0.6, "top_p": 0.95, "top_k": 20},
    "llama": {"temperature": 0.6, "top_p": 0.9, "top_k": -1},
    "smollm": {"temperature": 0.2, "top_p": 0.9, "top_k": -1},
}

# keys eval.json and the metric names use next to benchmark names (defined with the params that declare benchmarks)
RESERVED_NAMES = RESERVED_BENCHMARK_NAMES
RAREDIS_SUB = "raredis_sub"  # the prepare stage's RareDis-Sub file, data.out_dir/raredis_sub.jsonl
RAREDIS_DISPLAY = "RareDis-Sub"


class BenchmarkError(MedssrError, ValueError):
    """A declared benchmark that cannot be read; the message names the params key and the file."""


def sampling_for_family(cfg: SamplingCfg, family: str | None, family_defaults: bool) -> SamplingCfg:
    """The eval sampling settings for a checkpoint: params as given, or with the family's temperature/top_p/top_k."""
    if not family_defaults or family not in FAMILY_SAMPLING:
        return cfg
    return dataclasses.replace(cfg, **FAMILY_SAMPLING[family])


def _first_char(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        while True:
            chunk = fh.read(4096)
            if not chunk:
                return ""
            stripped = chunk.lstrip().lstrip("\ufeff")
            if stripped:
                return stripped[0]


def load_questions_file(path: str | os.PathLike, name: str, strict: bool = True) -> list[Question]:
    """Read one benchmark file in any accepted shape; every question must carry a gold answer."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if _first_char(path) == "[":
        questions = load_benchmark_file(path, name, strict=strict)
    else:
        questions, seen = [], set()
        for lineno, obj in iter_jsonl(path):
            is_raw = isinstance(obj, dict) and "options" not in obj and "gold" in obj
            try:
                q = benchmark_row_to_question(obj, name, path, lineno) if is_raw else validate_question(obj, path, lineno)
                if q.id in seen:
                    raise RecordError(path, lineno, "id", f"duplicate id {q.id!r}")
            except RecordError:
                if strict:
                    raise
                continue
            seen.add(q.id)
            questions.append(q)
    for q in questions:
        if q.answer is None:
            raise BenchmarkError(f"{path}: question {q.id!r}: answer: missing (a benchmark question needs a gold answer)")
    return questions


def seeded_slice(questions: list[Question], n: int | None, seed: int) -> list[Question]:
    """A reproducible random subset of ``n`` questions, kept in file order (all of them when n is None)."""
    if n is None or n >= len(questions):
        return list(questions)
    keep = set(random.Random(seed).sample(range(len(questions)), n))
    return [q for i, q in enumerate(questions) if i in keep]


def is_rare_set(name: str) -> bool:
    """A rare-disease set (RareDis-Sub, a ReDis-QA copy declared as ``raredis_...``) is sliced stratified by category."""
    return name.startswith("raredis")


def category_quota(sizes: Mapping[str, int], n: int) -> dict[str, int]:
    """How many of ``n`` questions each category gets: equal shares, capped by the category's size, repeated on what is left.

    When fewer questions are left than categories still open, one each goes to the categories with the most
    questions not yet taken (ties: the order of ``sizes``). E.g. sizes {a: 10, b: 1, c: 5}, n=9 -> {a: 4, b: 1, c: 4}.
    """
    quota = {c: 0 for c in sizes}
    left = min(n, sum(sizes.values()))
    open_ = [c for c in sizes if sizes[c] > 0]
    while left > 0:
        share = left // len(open_)
        if share == 0:
            order = sorted(open_, key=lambda c: (-(sizes[c] - quota[c]), list(sizes).index(c)))
            for c in order[:left]:
                quota[c] += 1
            break
        for c in open_:
            take = min(share, sizes[c] - quota[c])
            quota[c] += take
            left -= take
        open_ = [c for c in open_ if quota[c] < sizes[c]]
    return quota


def _category_key(q: Question) -> str:
    return q.category if isinstance(q.category, str) else ""


def stratified_slice(questions: list[Question], n: int | None, seed: int) -> list[Question]:
    """``n`` questions drawn per ``category`` by ``category_quota`` (seeded per category), kept in file order.

    Every category with questions is represented whenever ``n`` >= the number of categories; categories are
    ordered as medssr.records.CATEGORIES, then any others alphabetically, with uncategorised questions last.
    """
    if n is None or n >= len(questions):
        return list(questions)
    groups: dict[str, list[int]] = {}
    for i, q in enumerate(questions):
        groups.setdefault(_category_key(q), []).append(i)
    rank = {c: k for k, c in enumerate(CATEGORIES)}
    ordered = sorted(groups, key=lambda c: (c == "", rank.get(c, len(rank)), c))
    quota = category_quota({c: len(groups[c]) for c in ordered}, n)
    keep: set[int] = set()
    for c in ordered:
        keep.update(random.Random(f"{seed}/{c}").sample(groups[c], quota[c]))
    return [q for i, q in enumerate(questions) if i in keep]


def load_declared(benchmarks: Mapping[str, str], max_per_benchmark: int | None = None, seed: int = 0,
                  strict: bool = True, max_raredis: int | None = None) -> dict[str, list[Question]]:
    """Load every benchmark in ``benchmarks`` (name -> file), sliced to ``max_per_benchmark``.

    Rare-disease sets (``is_rare_set``) are sliced stratified by category to ``max_raredis`` (None = ``max_per_benchmark``).
    """
    if not benchmarks:
        raise BenchmarkError("eval.benchmarks is empty: declare benchmarks as `name: path` (e.g. medqa: data/prepared/benchmarks/medqa.jsonl), "
                             "or pass eval_benchmarks(params, prepared_dir) to get every data.benchmarks entry + raredis_sub")
    out: dict[str, list[Question]] = {}
    for name, path in benchmarks.items():
        problem = benchmark_name_problem(name)
        if problem:
            raise BenchmarkError(f"eval.benchmarks.{name}: {problem}")
        try:
            qs = load_questions_file(path, name, strict=strict)
        except FileNotFoundError:
            raise BenchmarkError(f"eval.benchmarks.{name}: {path}: no such file (run the prepare stage, or fix the path)") from None
        if not qs:
            raise BenchmarkError(f"eval.benchmarks.{name}: {path}: no questions")
        if is_rare_set(name):
            out[name] = stratified_slice(qs, max_per_benchmark if max_raredis is None else max_raredis, seed)
        else:
            out[name] = seeded_slice(qs, max_per_benchmark, seed)
    return out


def evaluated_names(params: Any) -> list[str]:
    """The benchmarks an evaluation runs: ``eval.benchmarks``' names when given, else every ``data.benchmarks`` entry + RareDis-Sub."""
    return list(params.eval.benchmarks) if params.eval.benchmarks else [*params.data.benchmarks, RAREDIS_SUB]


def eval_benchmarks(params: Any, prepared_dir: str | os.PathLike) -> dict[str, str]:
    """What the evaluation reads: ``eval.benchmarks`` when given, else the prepared file of each ``evaluated_names``
    entry under ``prepared_dir`` (the prepare stage's output dir: benchmarks/<name>.jsonl, raredis_sub.jsonl)."""
    if params.eval.benchmarks:
        return dict(params.eval.benchmarks)
    out = Path(prepared_dir)
    return {name: str(out / f"{name}.jsonl" if name == RAREDIS_SUB else out / "benchmarks" / f"{name}.jsonl")
            for name in evaluated_names(params)}


def load_evaluated(params: Any, prepared_dir: str | os.PathLike, strict: bool = True) -> dict[str, list[Question]]:
    """The questions an evaluation runs: ``eval_benchmarks(params, prepared_dir)`` sliced by eval.max_per_benchmark / eval.max_raredis."""
    cfg = params.eval
    return load_declared(eval_benchmarks(params, prepared_dir), cfg.max_per_benchmark, cfg.seed, strict=strict,
                         max_raredis=cfg.max_raredis)


def display_names(params: Any) -> dict[str, str]:
    """Table names per benchmark name: the declaration's ``display`` (paper spelling), RareDis-Sub, else the name itself."""
    names = {name: decl.display or name for name, decl in params.data.benchmarks.items()}
    for name in evaluated_names(params):
        names.setdefault(name, RAREDIS_DISPLAY if name == RAREDIS_SUB else name)
    return names


def paper_benchmarks(params: Any) -> list[str]:
    """The benchmarks declared ``paper: true`` (the paper's nine Table 2 sets), in declaration order: the headline average's set."""
    return [name for name, decl in params.data.benchmarks.items() if decl.paper]
