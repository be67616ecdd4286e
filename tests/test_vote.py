"""Pure majority voting (paper Eq. 3): the rules the label stage relies on, and the one tie rule GRPO rewards share."""

from __future__ import annotations

import itertools

import pytest

from medssr.label.vote import agreement_bucket, count_statuses, majority_vote, tie_break
from medssr.rl.rewards import group_stats, majority, online_vote_reward


def test_majority_is_the_most_frequent_valid_letter():
    r = majority_vote(["B", "A", "B", None, "C", "B", None, "A"], "q1")
    assert (r.majority, r.status, r.n_valid, r.tied) == ("B", "kept", 6, ("B",))


def test_agreement_is_winner_count_over_all_g_votes_not_over_valid_ones():
    r = majority_vote(["B", "B", None, None, None, None, None, None], "q1")
    assert r.majority == "B"
    assert r.agreement == pytest.approx(2 / 8)
    assert r.n_valid == 2


def test_no_valid_vote_drops_the_question():
    r = majority_vote([None] * 8, "q1")
    assert (r.majority, r.status, r.agreement, r.n_valid) == (None, "no_valid", 0.0, 0)
    assert not r.kept


def test_seeded_tie_break_is_deterministic_and_picks_a_tied_letter():
    votes = ["A", "C", "A", "C", None, "B", None, None]
    picks = {majority_vote(votes, "syn-7", seed=3).majority for _ in range(5)}
    assert len(picks) == 1 and picks <= {"A", "C"}
    assert majority_vote(votes, "syn-7", seed=3).tied == ("A", "C")


def test_seeded_tie_break_ignores_vote_order():
    votes = ["A", "C", "A", "C", "B"]
    picks = {majority_vote(list(p), "syn-7", seed=1).majority for p in itertools.permutations(votes)}
    assert len(picks) == 1


def test_tie_break_depends_on_question_id_and_seed_only():
    # over many ids both tied letters get picked (it is a draw, not "first letter wins")
    picks = {tie_break(["A", "C"], f"q{i}", 0) for i in range(40)}
    assert picks == {"A", "C"}
    assert tie_break(["C", "A"], "q5", 0) == tie_break(["A", "C"], "q5", 0)
    assert any(tie_break(["A", "C"], f"q{i}", 0) != tie_break(["A", "C"], f"q{i}", 1) for i in range(40))


def test_ties_drop_drops_tied_questions_but_not_clear_winners():
    tied = majority_vote(["A", "B", None, None], "q1", ties="drop")
    assert (tied.status, tied.majority) == ("tie", None)
    clear = majority_vote(["A", "B", "B", None], "q1", ties="drop")
    assert (clear.status, clear.majority) == ("kept", "B")


def test_min_agreement_drops_weak_majorities():
    votes = ["A", "A", "A", "B", "B", "C", None, None]  # A: 3/8
    assert majority_vote(votes, "q", min_agreement=0.375).status == "kept"
    low = majority_vote(votes, "q", min_agreement=0.5)
    assert (low.status, low.majority, low.agreement) == ("low_agreement", None, 0.375)


def test_max_agreement_drops_unanimous_questions_as_too_easy():
    unanimous, seven = ["A"] * 8, ["A"] * 7 + [None]  # 8/8 and 7/8
    assert majority_vote(unanimous, "q").status == "kept"  # 1.0, the default, keeps them
    easy = majority_vote(unanimous, "q", max_agreement=0.875)
    assert (easy.status, easy.majority, easy.agreement, easy.kept) == ("too_easy", None, 1.0, False)
    assert majority_vote(seven, "q", max_agreement=0.875).status == "kept"  # the band's upper end is inclusive


def test_an_empty_agreement_band_is_an_error_naming_both_params():
    with pytest.raises(ValueError, match=r"label\.min_agreement: 0\.9 is above label\.max_agreement \(0\.5\)"):
        majority_vote(["A"], "q", min_agreement=0.9, max_agreement=0.5)


def test_unknown_ties_mode_is_an_error_naming_the_param():
    with pytest.raises(ValueError, match="label.ties"):
        majority_vote(["A"], "q", ties="random")  # type: ignore[arg-type]


def test_count_statuses_reports_every_status():
    rs = [majority_vote(["A"], "a"), majority_vote([None], "b"), majority_vote(["A", "B"], "c", ties="drop"),
          majority_vote(["A", "A"], "d", max_agreement=0.5)]
    assert count_statuses(rs) == {"kept": 1, "no_valid": 1, "tie": 1, "low_agreement": 0, "too_easy": 1}


def test_agreement_buckets_are_half_open_with_one_in_the_last():
    assert agreement_bucket(0.0) == (0.0, 0.5)
    assert agreement_bucket(0.5) == (0.5, 0.75)
    assert agreement_bucket(0.74) == (0.5, 0.75)
    assert agreement_bucket(0.75) == (0.75, 1.0)
    assert agreement_bucket(1.0) == (0.75, 1.0)


# --- the same vote in the GRPO rewards (online voting ablation, collapse statistics) ----------------------------
TIED = ["The answer is A.", "The answer is C.", "The answer is A.", "The answer is C."]
OPTIONS = {"A": "one", "B": "two", "C": "three", "D": "four"}


def test_reward_majority_is_the_label_stage_vote_for_every_key_and_seed():
    votes = ["A", "C", None, "C", "A", "B"]
    for i in range(40):
        assert majority(votes, f"syn-{i}", seed=i % 3) == majority_vote(votes, f"syn-{i}", seed=i % 3).majority
    assert majority([None, None], "syn-0") is None


def test_online_vote_breaks_a_tie_like_the_label_stage_keyed_by_question_id():
    winner = tie_break(["A", "C"], "syn-1", 0)
    assert winner == "C"  # not the smallest letter: the draw, keyed by the row's id
    rewards = online_vote_reward(["p"] * 4, TIED, options=[OPTIONS] * 4, id=["syn-1"] * 4)
    assert rewards == [float(t.endswith(f"{winner}.")) for t in TIED]


def test_online_vote_ties_are_not_biased_toward_a():
    prompts = [f"question {i}" for i in range(200) for _ in range(4)]
    rewards = online_vote_reward(prompts, TIED * 200, options=[OPTIONS] * 800)
    a_wins = sum(rewards[i] for i in range(0, 800, 4))  # rollout 0 of each group answered A
    assert 70 < a_wins < 130  # about half of 200 tied groups, not all of them


def test_online_vote_tie_depends_on_the_seed_not_on_rollout_order():
    ids = [f"syn-{i}" for i in range(40) for _ in range(4)]
    base = online_vote_reward(ids, TIED * 40, options=[OPTIONS] * 160, id=ids)
    flipped = online_vote_reward(ids, TIED[::-1] * 40, options=[OPTIONS] * 160, id=ids)
    assert [base[i] for i in range(0, 160, 4)] == [flipped[i + 1] for i in range(0, 160, 4)]  # same letter wins
    assert base != online_vote_reward(ids, TIED * 40, options=[OPTIONS] * 160, id=ids, seed=1)


def test_group_stats_report_the_shared_vote():
    assert group_stats(["A", "C", "A", "C"], "syn-1")["majority"] == tie_break(["A", "C"], "syn-1", 0) == "C"
