"""A transparent heuristic for 'reasoning-heavy' seed questions (paper prompt F.3 asks an LLM the same thing).

F.3 calls a question reasoning when it interprets a clinical scenario, compares several factors and asks
"most likely" or "best next step"; memorisation when one recalled fact answers it. The heuristic scores
those cues; ``select_seeds`` takes any ``classifier(q) -> bool``, so the LLM classifier can replace it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from medssr.records import Question

_VIGNETTE = re.compile(
    r"\b\d{1,3}[- ](?:year|month|week|day)s?[- ]old\b"
    r"|\b(?:man|woman|boy|girl|patient|child|infant|neonate|newborn|gentleman|lady)\b[^.?!]{0,40}?"
    r"\b(?:presents|presented|is brought|was brought|comes|came|complains|is admitted|was admitted|is evaluated|consults)\b",
    re.IGNORECASE)
_PRESENTS = re.compile(
    r"\b(?:presents?|presented|brought to|comes to|admitted|complains?|history of|reports|examination shows|on examination)\b",
    re.IGNORECASE)
_MEASURE = re.compile(
    r"\d(?:[\d.,]*)\s*(?:mm ?Hg|/min|°\s?[CF]|mg/dL|mmol/L|mEq/L|g/dL|U/L|/mm3|/μL|/uL|bpm|beats|breaths|kg|cm|%)", re.IGNORECASE)
_ASK_STRONG = re.compile(
    r"\b(?:most likely|most probable|next (?:best )?step|best initial|most appropriate|best (?:next|treatment|management))\b",
    re.IGNORECASE)
_ASK_WEAK = re.compile(
    r"\b(?:best explains?|most consistent|underlying|mechanism|account for|expected to|would (?:be )?most)\b", re.IGNORECASE)
_SENTENCES = re.compile(r"[.?!](?:\s|$)")


@dataclass
class ReasoningScore:
    score: int
    heavy: bool
    cues: list[str]


def reasoning_score(q: Question, threshold: int = 3) -> ReasoningScore:
    """Score the clinical-vignette and multi-step cues of a question's stem; heavy when score >= threshold."""
    stem = q.question
    score, cues = 0, []
    if _VIGNETTE.search(stem):
        score, cues = score + 2, [*cues, "vignette"]
    if _PRESENTS.search(stem):
        score, cues = score + 1, [*cues, "presentation"]
    n_measure = len(_MEASURE.findall(stem))
    if n_measure:
        score, cues = score + (2 if n_measure >= 3 else 1), [*cues, f"measurements:{n_measure}"]
    if _ASK_STRONG.search(stem):
        score, cues = score + 2, [*cues, "asks_most_likely"]
    elif _ASK_WEAK.search(stem):
        score, cues = score + 1, [*cues, "asks_explain"]
    words = len(stem.split())
    if words >= 40:
        score, cues = score + (2 if words >= 60 else 1), [*cues, f"words:{words}"]
    if len(_SENTENCES.findall(stem)) >= 3:
        score, cues = score + 1, [*cues, "multi_sentence"]
    return ReasoningScore(score, score >= threshold, cues)


def is_reasoning_heavy(q: Question) -> bool:
    """The default seed classifier: the heuristic at its default threshold."""
    return reasoning_score(q).heavy


def select_seeds(rows: Iterable[Question], classifier: Callable[[Question], bool] = is_reasoning_heavy,
                 max_seeds: int | None = None, seed: int = 0) -> list[Question]:
    """Reasoning-heavy questions among real training rows, capped by a seeded sample (order kept)."""
    rows = list(rows)
    many = getattr(classifier, "classify_many", None)  # LLM classifiers batch their requests
    flags = many(rows) if many else [classifier(q) for q in rows]
    chosen = [q for q, keep in zip(rows, flags, strict=True) if keep]
    if max_seeds is not None and len(chosen) > max_seeds:
        keep = set(random.Random(seed).sample(range(len(chosen)), max_seeds))
        chosen = [q for i, q in enumerate(chosen) if i in keep]
    return chosen
