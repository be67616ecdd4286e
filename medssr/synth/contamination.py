"""Contamination and near-duplicate filter: word n-gram overlap against benchmarks, seeds and earlier outputs.

Texts are normalised (lower case, punctuation to spaces) and cut into word n-grams (default 8). The score of
a candidate against one reference is the overlap coefficient |G(c) ∩ G(r)| / min(|G(c)|, |G(r)|): 1.0 when
either text is contained in the other, so a copied stem with new options and a short benchmark question
pasted into a longer vignette are both caught. Exact counts come from an inverted index built once (no
MinHash estimate is needed at this size: the 8,617 questions of the nine declared benchmarks index in 0.9 s).
A text shorter than n words is a single gram of all its words.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from medssr.records import Question

_WORD = re.compile(r"[a-z0-9]+")

# Reference kinds, in the order a match is reported: contamination of evaluation data first.
KINDS = ("benchmark", "raredis_sub", "seed", "synthetic")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def question_text(q: Question) -> str:
    """Stem and option texts (letters dropped): what two questions share when one copies the other."""
    return q.question + " " + " ".join(q.options.values())


def gram_set(text: str, n: int) -> set[int]:
    w = words(text)
    if not w:
        return set()
    if len(w) < n:
        return {hash(" ".join(w))}
    return {hash(" ".join(w[i : i + n])) for i in range(len(w) - n + 1)}


@dataclass(frozen=True)
class Match:
    kind: str  # one of KINDS
    ref_id: str
    group: str  # benchmark name for kind 'benchmark', else the kind
    score: float


class OverlapIndex:
    """Inverted index of reference n-grams; ``add`` references, ``match`` candidates."""

    def __init__(self, n: int = 8, threshold: float = 0.5):
        if n < 1:
            raise ValueError(f"n-gram size must be >= 1, got {n}")
        self.n, self.threshold = n, threshold
        self.postings: dict[int, list[int]] = {}
        self.refs: list[tuple[str, str, str]] = []  # (kind, id, group)
        self.sizes: list[int] = []

    def __len__(self) -> int:
        return len(self.refs)

    def add(self, kind: str, ref_id: str, text: str, group: str | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown reference kind {kind!r} (expected one of {KINDS})")
        grams = gram_set(text, self.n)
        if not grams:
            return
        idx = len(self.refs)
        self.refs.append((kind, ref_id, group or kind))
        self.sizes.append(len(grams))
        for g in grams:
            self.postings.setdefault(g, []).append(idx)

    def add_questions(self, kind: str, questions: Iterable[Question], group: str | None = None) -> None:
        for q in questions:
            self.add(kind, q.id, question_text(q), group)

    def scores(self, text: str) -> dict[int, float]:
        """Overlap coefficient against every reference sharing at least one gram."""
        grams = gram_set(text, self.n)
        if not grams:
            return {}
        shared: Counter[int] = Counter()
        for g in grams:
            shared.update(self.postings.get(g, ()))
        return {r: c / min(len(grams), self.sizes[r]) for r, c in shared.items()}

    def match(self, text: str) -> Match | None:
        """The first kind (in KINDS order) with a reference scoring above the threshold; its best reference."""
        best: dict[str, tuple[float, int]] = {}
        for r, s in self.scores(text).items():
            if s > self.threshold:
                kind = self.refs[r][0]
                if s > best.get(kind, (-1.0, -1))[0]:
                    best[kind] = (s, r)
        for kind in KINDS:
            if kind in best:
                s, r = best[kind]
                _, ref_id, group = self.refs[r]
                return Match(kind, ref_id, group, round(s, 4))
        return None


def build_index(benchmarks: dict[str, list[Question]], raredis_sub: list[Question], seeds: list[Question],
                n: int = 8, threshold: float = 0.5) -> OverlapIndex:
    """Index every evaluation question (benchmarks by name, RareDis-Sub) and the seed pool."""
    index = OverlapIndex(n, threshold)
    for name, qs in benchmarks.items():
        index.add_questions("benchmark", qs, group=name)
    index.add_questions("raredis_sub", raredis_sub)
    index.add_questions("seed", seeds)
    return index


class SimilarityIndex:
    """Question-level near-duplicates: rapidfuzz's normalised edit similarity (``fuzz.ratio``, 0-100) of the normalised
    question text against every reference; m1 drops synthetic questions at >= 95 against each other and the benchmarks.

    The n-gram overlap above catches copied passages; this catches a question re-worded a little everywhere (a word
    changed every few words leaves no shared 8-gram), which a generator at temperature 0.7 from two seeds produces.
    """

    def __init__(self, threshold: float = 95.0):
        self.threshold = threshold
        self.texts: list[str] = []
        self.refs: list[tuple[str, str, str]] = []  # (kind, id, group)

    def __len__(self) -> int:
        return len(self.texts)

    def add(self, kind: str, ref_id: str, text: str, group: str | None = None) -> None:
        self.texts.append(" ".join(words(text)))
        self.refs.append((kind, ref_id, group or kind))

    def add_questions(self, kind: str, questions: Iterable[Question], group: str | None = None) -> None:
        for q in questions:
            self.add(kind, q.id, question_text(q), group)

    def match(self, text: str) -> Match | None:
        """The most similar reference at or above the threshold, else None."""
        from rapidfuzz import fuzz, process

        if not self.texts:
            return None
        hit = process.extractOne(" ".join(words(text)), self.texts, scorer=fuzz.ratio, score_cutoff=self.threshold)
        if hit is None:
            return None
        _, score, i = hit
        kind, ref_id, group = self.refs[i]
        return Match(kind, ref_id, group, round(float(score), 2))


def build_similarity_index(benchmarks: dict[str, list[Question]], raredis_sub: list[Question], seeds: list[Question],
                           threshold: float = 95.0) -> SimilarityIndex:
    """Every evaluation question and seed; accepted synthetic questions join as they are accepted."""
    index = SimilarityIndex(threshold)
    for name, qs in benchmarks.items():
        index.add_questions("benchmark", qs, group=name)
    index.add_questions("raredis_sub", raredis_sub)
    index.add_questions("seed", seeds)
    return index
