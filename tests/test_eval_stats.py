"""Evaluation statistics against hand-computed values: Wilson, exact McNemar, nested paired bootstrap, decoding std,
the paired permutation test of a macro difference."""

from __future__ import annotations

import numpy as np
import pytest

from eval.stats import (
    PERM_DRAWS,
    bootstrap_interval,
    decoding_std,
    discordant,
    majority_correct,
    mcnemar_exact,
    permutation_p,
    stable_seed,
    wilson_interval,
)


def test_wilson_interval_at_3_of_16_is_6_6_to_43_0_percent():
    low, high = wilson_interval(3, 16)
    assert (round(100 * low, 1), round(100 * high, 1)) == (6.6, 43.0)


def test_wilson_interval_at_zero_successes_starts_at_zero_and_is_not_degenerate():
    low, high = wilson_interval(0, 10)
    assert low == 0.0
    assert high == pytest.approx(0.2775, abs=1e-4)  # z^2 / (n + z^2) with z = 1.959964


def test_wilson_interval_narrows_with_lower_confidence():
    wide, narrow = wilson_interval(8, 16, 0.95), wilson_interval(8, 16, 0.80)
    assert wide[0] < narrow[0] < 0.5 < narrow[1] < wide[1]


def test_wilson_interval_of_no_questions_is_an_error():
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def test_mcnemar_exact_one_against_seven_discordant():
    # X ~ Bin(8, 1/2): P[X <= 1] = (1 + 8) / 256, two-sided p = 18 / 256
    assert mcnemar_exact(1, 7) == pytest.approx(18 / 256)
    assert mcnemar_exact(7, 1) == mcnemar_exact(1, 7)


def test_mcnemar_exact_is_one_without_discordant_pairs_and_capped_at_one():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 3) == 1.0  # 2 * P[X <= 3], X ~ Bin(6, 1/2) = 2 * 42/64 > 1


def test_mcnemar_exact_five_against_none():
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)


def test_majority_correct_needs_more_than_half_of_the_runs():
    m = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 1]])
    assert majority_correct(m).tolist() == [False, True, False]


def test_discordant_counts_questions_each_checkpoint_alone_gets_right():
    ref = np.array([[1], [1], [0], [0], [0]])
    other = np.array([[1], [0], [1], [1], [0]])
    assert discordant(ref, other) == (2, 1)  # b: other only; c: reference only


def test_decoding_std_is_population_std_as_in_table_9():
    assert decoding_std([0.5, 0.7]) == pytest.approx(0.1)  # ddof=1 would give 0.1414
    assert decoding_std([0.4]) == 0.0


def test_bootstrap_of_identical_checkpoints_is_zero_zero():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 2, size=(30, 4)).astype(float)
    assert bootstrap_interval([a - a], 500, seed=1) == (0.0, 0.0)


def test_bootstrap_of_two_question_set_spans_zero_to_one():
    # resampled means of {0, 1} are 0, 1/2, 1 with probability 1/4, 1/2, 1/4: both tails hold far more than 2.5 %
    assert bootstrap_interval([np.array([[0.0], [1.0]])], 2000, seed=0) == (0.0, 1.0)


def test_bootstrap_resamples_runs_within_questions():
    # every question is right in one run of two: resampling questions alone would give [0.5, 0.5]
    low, high = bootstrap_interval([np.array([[0.0, 1.0]] * 50)], 2000, seed=0)
    assert low < 0.45 and high > 0.55


def test_bootstrap_of_macro_average_resamples_within_each_stratum():
    ones, zeros = np.ones((5, 1)), np.zeros((20, 1))
    assert bootstrap_interval([ones, zeros], 300, seed=0) == (0.5, 0.5)  # pooled questions would vary


def test_bootstrap_is_reproducible_for_a_seed():
    a = np.random.default_rng(0).integers(0, 2, size=(40, 2)).astype(float)
    first = bootstrap_interval([a], 1000, seed=stable_seed(7, "stage2", "medqa"))
    assert bootstrap_interval([a], 1000, seed=stable_seed(7, "stage2", "medqa")) == first
    assert bootstrap_interval([a], 1000, seed=stable_seed(7, "stage2", "pubmedqa")) != first


def test_bootstrap_rejects_an_empty_stratum():
    with pytest.raises(ValueError):
        bootstrap_interval([np.zeros((0, 1))], 100)


# --------------------------------------------------------------------------------------------------------------
# the paired permutation test of a macro difference (the p of an average row)


def _brute_force_p(strata):
    """Every swap pattern of every question, the macro mean recomputed in exact fractions: the definition itself."""
    import itertools
    from fractions import Fraction

    rows = [(s, [int(x) for x in m.sum(axis=1)], m.shape[0] * m.shape[1]) for s, m in enumerate(strata)]
    cells = [(a, n) for _, r, n in rows for a in r if a]  # a question with no difference swaps to itself
    observed = abs(sum(Fraction(a, n) for a, n in cells))
    hits = sum(abs(sum(Fraction(e * a, n) for e, (a, n) in zip(signs, cells, strict=True))) >= observed
               for signs in itertools.product((1, -1), repeat=len(cells)))
    return hits / 2 ** len(cells)


def test_permutation_of_identical_checkpoints_is_one():
    a = np.random.default_rng(3).integers(0, 2, size=(30, 4)).astype(float)
    assert permutation_p([a - a, np.zeros((7, 4))]) == 1.0


def test_permutation_of_one_benchmark_with_one_run_is_the_exact_mcnemar_test():
    # k = 1, one stratum: a swap flips one discordant question, the statistic is (b - c) / n: the sign test
    for b, c in ((1, 7), (0, 5), (3, 3), (10, 2)):
        d = np.array([[1.0]] * b + [[-1.0]] * c + [[0.0]] * 4)
        assert permutation_p([d]) == pytest.approx(mcnemar_exact(b, c))


def test_permutation_all_improved_is_two_in_two_to_the_m():
    # 15 questions over three benchmarks all improved: only "no swap" and "swap all" reach |D|
    strata = [np.ones((5, 1)), np.ones((4, 1)), np.ones((6, 1))]
    assert permutation_p(strata) == 2 / 2**15


def test_permutation_weighs_each_stratum_by_its_own_size():
    # 6 questions lost on a benchmark of 100, 9 won on three benchmarks of 3: the macro diff (+0.735) is far from 0
    # and only the 2 x 64 patterns that keep the 9 small-benchmark questions together reach it: p = 128 / 2^15
    big = np.array([[-1.0]] * 6 + [[0.0]] * 94)
    small = [np.ones((3, 1))] * 3
    assert permutation_p([big, *small]) == 128 / 2**15
    assert mcnemar_exact(9, 6) > 0.6  # the pooled questions say nothing


def test_permutation_matches_the_brute_force_definition_with_runs_and_uneven_strata():
    rng = np.random.default_rng(11)
    for _ in range(5):
        strata = [(rng.integers(0, 2, size=(n, 2)) - rng.integers(0, 2, size=(n, 2))).astype(float) for n in (3, 4, 2)]
        assert permutation_p(strata) == pytest.approx(_brute_force_p(strata), abs=1e-12)


def _column(*diffs: int, n: int) -> np.ndarray:
    """A k = 1 difference matrix of n questions: ``diffs`` first, the rest 0."""
    return np.array([[float(x)] for x in diffs] + [[0.0]] * (n - len(diffs)))


def test_permutation_counts_ties_exactly_across_strata():
    # -2/10 - 1/8 + 1/7 is tied by 2 more of the 16 swap patterns than float sums of the same fractions find (8/16)
    strata = [_column(-1, -1, n=10), _column(-1, n=8), _column(1, n=7)]
    assert permutation_p(strata) == _brute_force_p(strata) == 10 / 16


def test_permutation_monte_carlo_is_seeded_corrected_and_close_to_exact():
    d = np.array([[1.0]] * 24 + [[-1.0]] * 16 + [[0.0]] * 10)  # 40 differing questions: past the exact limit
    first = permutation_p([d], seed=stable_seed(0, "stage2", "perm", "avg"))
    assert permutation_p([d], seed=stable_seed(0, "stage2", "perm", "avg")) == first
    assert permutation_p([d], seed=stable_seed(1, "stage2", "perm", "avg")) != first
    assert first == pytest.approx(mcnemar_exact(24, 16), abs=0.03)
    assert (first * (PERM_DRAWS + 1)) == pytest.approx(round(first * (PERM_DRAWS + 1)))  # (1 + hits) / (draws + 1)
    assert permutation_p([np.ones((40, 1))], seed=0) == 1 / (PERM_DRAWS + 1)  # never 0


def test_permutation_swaps_a_question_with_all_its_runs():
    # right in both runs vs wrong in both: a_i = 2 per question; run-by-run swaps would not be exchangeable pairs
    d = np.array([[1.0, 1.0]] * 3 + [[1.0, -1.0]] * 5)
    assert permutation_p([d]) == 2 / 2**3


def test_permutation_rejects_non_paired_input():
    with pytest.raises(ValueError):
        permutation_p([np.array([[0.5]])])
    with pytest.raises(ValueError):
        permutation_p([np.zeros((0, 1))])
