"""Majority voting over the policy's own answers (paper Eq. 3): pure functions, no model, no I/O.

The one vote of the project: the label stage votes offline with it, and the GRPO rewards (``medssr.rl.rewards``:
online voting, the collapse statistics) vote with it too, so a tie is broken by the same rule everywhere.
Standard library only: OpenRLHF imports it, through the reward file, in its own environment.

Rules (the label stage and its tests depend on them):
- A vote is an option letter or ``None`` (no valid answer in that completion).
- The majority is the most frequent valid letter. Ties are broken by a seeded draw among the tied letters,
  keyed by ``(seed, question id)`` only, so the result never depends on vote order or on where the question
  sits in the file (``ties="seeded"``); with ``ties="drop"`` a tied question is dropped.
- ``agreement`` is the winner's count over **all** G votes (``count / G``), not over the valid ones: a question
  where 2 of 8 completions answered (both "B") has agreement 0.25, not 1.0, because six samples never committed.
- A question with no valid vote at all is dropped; one whose agreement is below ``min_agreement`` is dropped, and
  one whose agreement is above ``max_agreement`` is dropped as too easy: when all G votes agree, every GRPO group
  on it is likely to share one reward (zero advantage, no gradient), so voting and training on it is pure cost
  (ReMEDY drops such questions by pass@n; here the votes say it without gold). ``max_agreement=1.0`` keeps them all.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

Status = Literal["kept", "no_valid", "tie", "low_agreement", "too_easy"]
STATUSES: tuple[Status, ...] = ("kept", "no_valid", "tie", "low_agreement", "too_easy")


@dataclass(frozen=True)
class VoteResult:
    """The outcome of voting on one question; ``majority`` is None unless ``status == 'kept'``."""

    votes: list[str | None]
    majority: str | None
    agreement: float
    n_valid: int
    tied: tuple[str, ...]  # letters sharing the top count (one letter when there is no tie)
    status: Status

    @property
    def kept(self) -> bool:
        return self.status == "kept"


def tie_break(tied: Sequence[str], question_id: str, seed: int) -> str:
    """Pick one of the tied letters from a hash of (seed, question id): deterministic and order-independent."""
    if not tied:
        raise ValueError("tie_break needs at least one letter")
    letters = sorted(set(tied))
    h = int.from_bytes(hashlib.sha256(f"{seed}:{question_id}".encode()).digest()[:8], "big")
    return letters[h % len(letters)]


def majority_vote(votes: Sequence[str | None], question_id: str, seed: int = 0, ties: Literal["seeded", "drop"] = "seeded",
                  min_agreement: float = 0.0, max_agreement: float = 1.0) -> VoteResult:
    """Eq. 3: the most frequent valid letter among the G votes, with the tie and agreement-band rules above."""
    if ties not in ("seeded", "drop"):
        raise ValueError(f"label.ties: expected 'seeded' or 'drop', got {ties!r}")
    if min_agreement > max_agreement:
        raise ValueError(band_problem(min_agreement, max_agreement))
    votes = list(votes)
    g = len(votes)
    counts = Counter(v for v in votes if v is not None)
    n_valid = sum(counts.values())
    if n_valid == 0:
        return VoteResult(votes, None, 0.0, 0, (), "no_valid")
    top = max(counts.values())
    tied = tuple(sorted(letter for letter, c in counts.items() if c == top))
    agreement = top / g
    if len(tied) > 1 and ties == "drop":
        return VoteResult(votes, None, agreement, n_valid, tied, "tie")
    winner = tied[0] if len(tied) == 1 else tie_break(tied, question_id, seed)
    if agreement < min_agreement:
        return VoteResult(votes, None, agreement, n_valid, tied, "low_agreement")
    if agreement > max_agreement:
        return VoteResult(votes, None, agreement, n_valid, tied, "too_easy")
    return VoteResult(votes, winner, agreement, n_valid, tied, "kept")


def band_problem(min_agreement: float, max_agreement: float) -> str:
    """The message for an empty agreement band (shared by the params check and the vote)."""
    return (f"label.min_agreement: {min_agreement} is above label.max_agreement ({max_agreement}), so the agreement band "
            "keeps no question; lower label.min_agreement or raise label.max_agreement (1.0 = no upper bound)")


def count_statuses(results: Iterable[VoteResult]) -> dict[str, int]:
    """How many questions ended in each status (every key of STATUSES present, zeros included)."""
    out = dict.fromkeys(STATUSES, 0)
    for r in results:
        out[r.status] += 1
    return out


def agreement_bucket(agreement: float, edges: Sequence[float] = (0.0, 0.5, 0.75, 1.0)) -> tuple[float, float]:
    """The ``[lo, hi)`` bucket holding ``agreement``; the last bucket is closed so 1.0 falls in it."""
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        if lo <= agreement < hi or (hi == edges[-1] and agreement == hi):
            return lo, hi
    raise ValueError(f"agreement {agreement} outside [{edges[0]}, {edges[-1]}]")
