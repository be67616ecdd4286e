"""Pure evaluation statistics: Wilson intervals, exact McNemar tests, nested paired bootstrap, decoding std.

Correctness is a questions x runs matrix (1 = correct). Questions are the sampling unit: intervals are over questions,
runs are repeated draws of the same question (decoding variance), never extra questions.

* Wilson score interval at the run-mean accuracy over the n questions (fractional successes when k > 1).
* Exact two-sided McNemar on discordant questions: b = reference wrong / other right, c = reference right / other
  wrong; p = min(1, 2 P[X <= min(b, c)]), X ~ Bin(b + c, 1/2), and p = 1 when b + c = 0. With k > 1 runs a question
  counts as correct when it is correct in more than half of its runs (a tie counts as wrong, for both checkpoints
  alike), so the pairs stay one per question and independent; run-aligned pairs would count a question k times.
* Nested bootstrap: resample questions with replacement; within each drawn question resample its k runs with
  replacement, the same run indices for both checkpoints (run r of every checkpoint used the same decoding seed).
  Several strata (benchmarks, categories) are resampled each within itself and the statistic is their macro mean,
  which gives the interval of a macro average. Percentile interval; seeded, so results are reproducible to the bit.
* Run-to-run std: population std (ddof = 0) of the per-run accuracies, as in the paper's Table 9.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

BOOT_CHUNK = 256  # resamples drawn at once (bounds memory at chunk x questions x runs)


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion; honest at small n and at 0 or n successes, unlike the normal interval."""
    if n <= 0:
        raise ValueError("a Wilson interval needs at least one question")
    if not 0 <= successes <= n:
        raise ValueError(f"successes {successes} outside [0, {n}]")
    z = _z(confidence)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends, not a rounding residue
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (a binomial sign test on b vs c)."""
    if b < 0 or c < 0:
        raise ValueError("discordant counts are non-negative")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def majority_correct(correct: np.ndarray) -> np.ndarray:
    """Per question: correct in more than half of its runs (questions x runs -> questions)."""
    correct = np.asarray(correct, dtype=float)
    return correct.sum(axis=1) * 2 > correct.shape[1]


def discordant(reference: np.ndarray, other: np.ndarray) -> tuple[int, int]:
    """(b, c): questions only ``other`` gets right by majority, and questions only ``reference`` gets right."""
    ref, oth = majority_correct(reference), majority_correct(other)
    return int(np.sum(~ref & oth)), int(np.sum(ref & ~oth))


def decoding_std(run_accuracies: Sequence[float]) -> float:
    """Population std (ddof = 0) of the per-run accuracies: the decoding variance of the paper's Table 9 (0 for k = 1)."""
    if not run_accuracies:
        raise ValueError("std of no runs is undefined")
    return float(np.std(np.asarray(run_accuracies, dtype=float), ddof=0))


def stable_seed(seed: int, *names: str) -> np.random.SeedSequence:
    """A seed for one named bootstrap, independent of the order in which bootstraps are run."""
    return np.random.SeedSequence([seed, *(zlib.crc32(n.encode()) for n in names)])


def bootstrap_interval(strata: Sequence[np.ndarray], n_boot: int, confidence: float = 0.95,
                       seed: int | np.random.SeedSequence = 0) -> tuple[float, float]:
    """Percentile interval of the macro mean of question x run matrices under the nested bootstrap.

    Pass one matrix for a single benchmark, one per benchmark for a macro average, and the difference of two
    checkpoints' 0/1 matrices (same question and run order) for a paired interval of their accuracy difference.
    """
    if n_boot < 1:
        raise ValueError("n_boot must be at least 1")
    _z(confidence)
    mats = [np.asarray(m, dtype=float) for m in strata]
    if not mats or any(m.ndim != 2 or m.shape[0] == 0 or m.shape[1] == 0 for m in mats):
        raise ValueError("each stratum must be a non-empty questions x runs matrix")
    rng = np.random.default_rng(seed)
    stats = np.zeros(n_boot)
    for start in range(0, n_boot, BOOT_CHUNK):
        size = min(BOOT_CHUNK, n_boot - start)
        total = np.zeros(size)
        for m in mats:
            n, k = m.shape
            q = rng.integers(0, n, size=(size, n))
            r = rng.integers(0, k, size=(size, n, k)) if k > 1 else np.zeros((size, n, 1), dtype=np.int64)
            total += m[q[:, :, None], r].mean(axis=(1, 2))
        stats[start:start + size] = total / len(mats)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return float(low), float(high)
