"""Training strategies as data (paper §3.3, Table 3, Fig. 6): which set and reward each stage uses."""

from __future__ import annotations

import pytest

from medssr.config import ConfigError
from medssr.rl.strategies import STRATEGIES, StagePlan, backend_problem, check_backend, plan, stage_plan


def test_two_stage_is_synthetic_majority_then_real_gold():
    assert plan("two_stage") == {"stage1": ("synthetic", "majority"), "stage2": ("real", "gold")}


def test_supervised_baseline_skips_stage1():
    assert plan("supervised") == {"stage1": (None, None), "stage2": ("real", "gold")}


def test_one_stage_mixes_both_sets_in_stage1_and_skips_stage2():
    assert plan("one_stage") == {"stage1": ("mixed", "majority"), "stage2": (None, None)}


def test_reverse_trains_real_first_then_synthetic():
    assert plan("reverse") == {"stage1": ("real", "gold"), "stage2": ("synthetic", "majority")}


def test_online_vote_votes_within_the_group_in_stage1():
    assert plan("online_vote")["stage1"] == StagePlan("synthetic", "online_vote")
    assert plan("online_vote")["stage2"] == StagePlan("real", "gold")


def test_every_strategy_trains_at_least_one_stage_on_real_or_synthetic_data():
    for name in STRATEGIES:
        kinds = {p.data for p in plan(name).values()} - {None}
        assert kinds, name


def test_unknown_strategy_names_the_param_and_the_choices():
    with pytest.raises(ConfigError, match=r"train.strategy: unknown strategy 'three_stage' \(known: two_stage, supervised"):
        plan("three_stage")


def test_unknown_stage_is_rejected():
    with pytest.raises(ConfigError, match="stage3"):
        stage_plan("two_stage", "stage3")


def test_online_vote_cannot_run_on_openrlhf():
    with pytest.raises(ConfigError, match="one sample at a time"):
        check_backend("online_vote", "openrlhf")
    check_backend("online_vote", "trl")
    check_backend("two_stage", "openrlhf")


def test_the_params_type_lists_exactly_the_strategies():
    import typing

    from medssr.config import TrainCfg

    assert typing.get_args(typing.get_type_hints(TrainCfg)["strategy"]) == STRATEGIES


def test_backend_problem_names_the_param_for_the_loader():
    assert backend_problem("online_vote", "openrlhf").startswith("train.strategy: 'online_vote' needs a reward that sees the whole group")
    assert backend_problem("online_vote", "trl") is None and backend_problem("reverse", "openrlhf") is None
