"""Keep benchmark questions out of the training data: id overlap, source flags, and normalised-text matches."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from medssr.records import Question

_NON_WORD = re.compile(r"[\W_]+")


def normalize_text(text: str) -> str:
    """Lowercase, NFKC, every run of punctuation/whitespace collapsed to one space: the key for duplicate matching."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def option_tokens(q: Question) -> frozenset[str]:
    return frozenset(normalize_text(" ".join(q.options.values())).split())


@dataclass
class LeakageIndex:
    """Benchmark ids and normalised stems (with each stem's option vocabularies) to test training rows against."""

    ids: set[str] = field(default_factory=set)
    stems: dict[str, list[frozenset[str]]] = field(default_factory=lambda: defaultdict(list))
    full: set[str] = field(default_factory=set)


def build_index(benchmark_questions: Iterable[Question]) -> LeakageIndex:
    """Index every benchmark (and extra RareDis) question by id, stem, and stem + options."""
    index = LeakageIndex()
    for q in benchmark_questions:
        index.ids.add(q.id)
        stem = normalize_text(q.question)
        index.stems[stem].append(option_tokens(q))
        index.full.add(normalize_text(q.render()))
    return index


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def leak_reason(q: Question, index: LeakageIndex, min_option_overlap: float = 0.5) -> str | None:
    """Why ``q`` counts as a benchmark item ("id", "known_test", "text"), or None.

    A stem match alone is not enough: generic stems ("Which of the following is true?") recur with other
    options, so the options must also share at least ``min_option_overlap`` of their words (Jaccard).
    """
    if q.id in index.ids:
        return "id"
    if q.meta.get("known_test"):
        return "known_test"
    if normalize_text(q.render()) in index.full:
        return "text"
    stem = normalize_text(q.question)
    if stem in index.stems:
        mine = option_tokens(q)
        if any(_jaccard(mine, theirs) >= min_option_overlap for theirs in index.stems[stem]):
            return "text"
    return None


def remove_leakage(rows: Iterable[Question], index: LeakageIndex,
                   min_option_overlap: float = 0.5) -> tuple[list[Question], dict[str, dict[str, int]]]:
    """Drop leaked rows; return (kept, {source: {reason: count}})."""
    kept: list[Question] = []
    removed: dict[str, Counter] = defaultdict(Counter)
    for q in rows:
        why = leak_reason(q, index, min_option_overlap)
        if why is None:
            kept.append(q)
        else:
            removed[q.source][why] += 1
    return kept, {s: dict(c) for s, c in removed.items()}
