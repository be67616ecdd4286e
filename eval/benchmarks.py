"""Declared benchmarks -> questions, and per-model-family decoding settings.

Benchmarks are data: params ``eval.benchmarks`` maps a name to a file, and any file in one of the shapes below
works without new Python:

* a JSON list in the MedSSR test format (``id``, ``question`` with ``\\nA. ...`` option lines, ``gold``), gz or plain;
* JSONL of our Question records (what the prepare stage writes: data/prepared/benchmarks/<name>.jsonl);
* JSONL of raw benchmark rows (``id``, ``question`` with options inline, ``gold``).

The shape is read from the content (first non-blank character ``[`` = JSON list), not from the name.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import random
import re
from collections.abc import Mapping
from pathlib import Path

from medssr.config import SamplingCfg
from medssr.data.loaders import benchmark_row_to_question, load_benchmark_file
from medssr.errors import MedssrError
from medssr.records import Question, RecordError, iter_jsonl, validate_question

# Each model's recommended decoding (paper §4.1 "recommended decoding hyperparameters for each model").
# qwen: Qwen3 model card (thinking mode) and MedSSR's own evaluator; llama: Llama-3.1-Instruct generation_config.json;
# smollm: SmolLM2-Instruct model card example. Used when eval.family_defaults is true.
FAMILY_SAMPLING: dict[str, dict[str, float | int]] = {
    "qwen": {"temperature": 0.6, "top_p": 0.95, "top_k": 20},
    "llama": {"temperature": 0.6, "top_p": 0.9, "top_k": -1},
    "smollm": {"temperature": 0.2, "top_p": 0.9, "top_k": -1},
}

# keys eval.json and the metric names use next to benchmark names
RESERVED_NAMES = frozenset({"avg", "avg_std", "raredis", "invalid_before", "invalid_after"})
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


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


def load_declared(benchmarks: Mapping[str, str], max_per_benchmark: int | None = None, seed: int = 0,
                  strict: bool = True) -> dict[str, list[Question]]:
    """Load every declared benchmark (params eval.benchmarks: name -> file), sliced to ``max_per_benchmark``."""
    if not benchmarks:
        raise BenchmarkError("eval.benchmarks is empty: declare benchmarks as `name: path` (e.g. medqa: data/prepared/benchmarks/medqa.jsonl)")
    out: dict[str, list[Question]] = {}
    for name, path in benchmarks.items():
        if not _NAME.fullmatch(name) or name in RESERVED_NAMES:
            raise BenchmarkError(f"eval.benchmarks.{name}: a benchmark name must match [A-Za-z0-9_.-]+ and not be one of "
                                 f"{', '.join(sorted(RESERVED_NAMES))} (it becomes a metric name and an eval.json key)")
        try:
            qs = load_questions_file(path, name, strict=strict)
        except FileNotFoundError:
            raise BenchmarkError(f"eval.benchmarks.{name}: {path}: no such file (run the prepare stage, or fix the path)") from None
        if not qs:
            raise BenchmarkError(f"eval.benchmarks.{name}: {path}: no questions")
        out[name] = seeded_slice(qs, max_per_benchmark, seed)
    return out
