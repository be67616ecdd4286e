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
* Paired permutation test of a macro difference (the test of an average row): under the null hypothesis that the
  two checkpoints are exchangeable on each question, swapping their answers to a question (all k runs together)
  flips the sign of that question's run-summed difference a_i = sum_r (other - reference). The statistic is the
  macro mean itself, D = (1/S) sum_s sum_{i in s} a_i / (n_s k_s) over S strata (benchmarks, categories) of n_s
  questions and k_s runs, recomputed for each sign pattern with every stratum keeping its own n_s; two-sided
  p = P[|D*| >= |D|]. Only questions with a_i != 0 matter: with m of them, all 2^m patterns are enumerated when
  m <= PERM_EXACT_MAX (exact p), otherwise PERM_DRAWS seeded random patterns give p = (1 + #{|D*| >= |D|}) /
  (draws + 1), never 0. D is compared in integers (a common denominator), so ties count exactly.
* Run-to-run std: population std (ddof = 0) of the per-run accuracies, as in the paper's Table 9.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

BOOT_CHUNK = 256  # resamples drawn at once (bounds memory at chunk x questions x runs)
PERM_EXACT_MAX = 16  # up to this many questions with a non-zero difference the permutation test enumerates all 2^m swaps
PERM_DRAWS = 9999  # random swap patterns beyond that (the smallest p is 1 / (PERM_DRAWS + 1) = 1e-4)


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


def _integer_rows(m: np.ndarray) -> np.ndarray:
    """Run sums of a difference matrix whose cells are -1, 0 or 1 (other minus reference, both 0/1)."""
    if not np.isin(m, (-1.0, 0.0, 1.0)).all():
        raise ValueError("a paired difference matrix holds -1, 0 and 1 only (other minus reference, both 0/1)")
    return m.sum(axis=1).round().astype(np.int64)


def permutation_p(strata: Sequence[np.ndarray], n_draws: int = PERM_DRAWS, seed: int | np.random.SeedSequence = 0,
                  exact_max: int = PERM_EXACT_MAX) -> float:
    """Two-sided paired permutation p of the macro mean of difference matrices (``bootstrap_interval``'s paired input).

    ``strata``: per benchmark (or category) the questions x runs matrix other minus reference (cells -1, 0, 1). The
    statistic is the macro mean of their means, the ``diff`` of a macro average; its null distribution swaps the two
    checkpoints' answers to each question (all runs together) independently with probability 1/2, each question
    staying in its stratum. Exact over all swaps when at most ``exact_max`` questions differ, else ``n_draws`` seeded
    random swap patterns with the +1 correction. Identical checkpoints give p = 1.
    """
    if n_draws < 1:
        raise ValueError("n_draws must be at least 1")
    mats = [np.asarray(m, dtype=float) for m in strata]
    if not mats or any(m.ndim != 2 or m.shape[0] == 0 or m.shape[1] == 0 for m in mats):
        raise ValueError("each stratum must be a non-empty questions x runs matrix")
    # D = (1/S) sum_s T_s / (n_s k_s) with integer T_s = sum_i eps_i a_i; times S * L (L = lcm of n_s k_s) it is the
    # integer U = sum_s T_s * L / (n_s k_s): compared exactly (Python integers where int64 could overflow)
    denoms = [m.shape[0] * m.shape[1] for m in mats]
    lcm = math.lcm(*denoms)
    coef = [lcm // d for d in denoms]
    rows = [_integer_rows(m) for m in mats]
    a = np.concatenate([r[r != 0] for r in rows]).astype(float)  # the questions whose swap changes D
    owner = np.concatenate([np.full(int(np.count_nonzero(r)), s) for s, r in enumerate(rows)])
    if a.size == 0:
        return 1.0
    bound = sum(c * int(np.abs(r).sum()) for c, r in zip(coef, rows, strict=True))
    weights = np.array(coef, dtype=np.int64 if bound < 2**62 else object)
    member = np.zeros((a.size, len(mats)))
    member[np.arange(a.size), owner] = a  # column s: the non-zero a_i of stratum s

    def u(signs: np.ndarray) -> np.ndarray:
        t = np.rint(signs @ member).astype(np.int64)  # per-stratum integer sums (exact: |T_s| < 2^53)
        return np.abs(t.astype(weights.dtype) @ weights)

    observed = u(np.ones((1, a.size)))[0]
    m = a.size
    if m <= exact_max:
        bits = (np.arange(2**m, dtype=np.int64)[:, None] >> np.arange(m)) & 1
        return float(np.count_nonzero(u(1.0 - 2.0 * bits) >= observed)) / 2**m
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, n_draws, BOOT_CHUNK):
        size = min(BOOT_CHUNK, n_draws - start)
        signs = 1.0 - 2.0 * rng.integers(0, 2, size=(size, m))
        hits += int(np.count_nonzero(u(signs) >= observed))
    return (1 + hits) / (n_draws + 1)
