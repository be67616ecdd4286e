"""The α/ρ attempt plan of Eq. 2: which prompt, which two seeds and which rare disease attempt ``i`` uses.

The plan of attempt ``i`` is a pure function of ``(seed, i)`` and the pools: every draw comes from
``numpy.random.default_rng((seed, i))`` in a fixed order, and ρ, the seed pair and the entity index are
drawn whatever α is. So a rerun with a larger ``n``, after a crash, or at another α rebuilds the same request
for the same attempt (cache hits: no repeated paid call), and at two values of α the attempts that stay F.1
are the very same requests.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("medssr.synth")


@dataclass(frozen=True)
class Attempt:
    """One planned generation: ``kind`` is 'F2' (knowledge-injected, ρ < α) or 'F1'."""

    index: int
    rho: float
    kind: str
    seed_indices: tuple[int, int]
    rare_disease: str | None


def plan_attempt(i: int, seed: int, alpha: float, n_seeds: int, entities: Sequence[str]) -> Attempt:
    """Plan attempt ``i``: ρ ~ U(0,1); two distinct seed questions; a rare disease from ``entities`` if ρ < α."""
    if n_seeds < 2:
        raise ValueError(f"synthesis needs at least 2 seed questions, got {n_seeds}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"synth.rare_ratio: expected a value in [0, 1], got {alpha}")
    rng = np.random.default_rng((int(seed), int(i)))
    rho = float(rng.random())
    a, b = (int(x) for x in rng.choice(n_seeds, size=2, replace=False))
    e = int(rng.integers(len(entities))) if entities else -1
    if rho < alpha:
        if e < 0:
            raise ValueError("synth.rare_ratio > 0 but the rare-disease list is empty (data/prepared/entities.jsonl)")
        return Attempt(i, rho, "F2", (a, b), entities[e])
    return Attempt(i, rho, "F1", (a, b), None)


def plan(start: int, stop: int, seed: int, alpha: float, n_seeds: int, entities: Sequence[str]) -> list[Attempt]:
    """Attempts ``start .. stop-1``."""
    return [plan_attempt(i, seed, alpha, n_seeds, entities) for i in range(start, stop)]


def entity_pool(entities: Sequence[str], coverage: Mapping[str, Sequence[str]] | None, prefer_covered: bool) -> list[str]:
    """E_rare as drawn from: only the entities the corpus covers when ``prefer_covered`` (order kept).

    Falls back to the whole list (with a warning) when no entity is covered, so α > 0 still works on a
    corpus without coverage data; retrieval then returns the nearest passages, as in the paper.
    """
    names = list(dict.fromkeys(entities))
    if not prefer_covered or not names:
        return names
    covered = [e for e in names if coverage and coverage.get(e)]
    if not covered:
        log.warning("synth.prefer_covered: no rare disease in the list has corpus coverage; drawing from all %d", len(names))
        return names
    return covered


# What share of an F.1 / F.2 attempt's accepted questions the benchmark tagger flags, before any is measured:
# §4.3 calls 13 % the natural share at α = 0; an F.2 question usually names the disease it was given.
PRIOR_TAGGED = {"F1": 0.13, "F2": 0.9}
PRIOR_WEIGHT = 4.0  # the priors count as this many questions of each kind


def share_quotas(n: int, target: float) -> tuple[int, int]:
    """(tagged, untagged) accepted questions wanted so that ``n`` of them have the measured rare share ``target``."""
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"synth.rare_share_target: expected a value in [0, 1], got {target}")
    tagged = round(n * target)
    return tagged, n - tagged


def steer_alpha(need_tagged: int, need_untagged: int, seen: Mapping[str, tuple[int, int]]) -> float:
    """α for the next wave when a measured rare share is the target (synth.rare_share_target).

    The F.2 share whose expected tagged share of new questions equals the share still needed, from the tagged rate
    of each prompt kind so far (``seen[kind] = (questions, tagged)``, smoothed by PRIOR_TAGGED). Nothing tagged
    still needed (target 0 included): 0, F.1 only. The quotas, not α, make the final share exact; α only keeps
    the dropped questions few. A pure function of the counts, so a rerun that replays the same responses replays
    the same α.
    """
    if need_tagged <= 0:
        return 0.0
    if need_untagged <= 0:
        return 1.0
    want = need_tagged / (need_tagged + need_untagged)
    n1, t1 = seen.get("F1", (0, 0))
    n2, t2 = seen.get("F2", (0, 0))
    p1 = (t1 + PRIOR_WEIGHT * PRIOR_TAGGED["F1"]) / (n1 + PRIOR_WEIGHT)
    p2 = (t2 + PRIOR_WEIGHT * PRIOR_TAGGED["F2"]) / (n2 + PRIOR_WEIGHT)
    if p2 <= p1:  # knowledge injection does not raise the tagged share here: F.2 would only cost retrieval
        return 0.0
    return round(min(1.0, max(0.0, (want - p1) / (p2 - p1))), 4)
