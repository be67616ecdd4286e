"""Evaluation statistics against hand-computed values: Wilson, exact McNemar, nested paired bootstrap, decoding std."""

from __future__ import annotations

import numpy as np
import pytest

from eval.stats import bootstrap_interval, decoding_std, discordant, majority_correct, mcnemar_exact, stable_seed, wilson_interval


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
