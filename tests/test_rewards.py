"""Rewards: exact match on the extracted answer, the online-vote ablation, collapse statistics."""

from __future__ import annotations

import json
import math

import pytest

from medssr.rl.rewards import (
    correctness,
    decode_label,
    encode_label,
    group_stats,
    majority,
    online_vote_reward,
    prompt_groups,
    strip_trailing_special_tokens,
    trl_reward,
)
from tests.rollouts import MAJORITY, MINORITY, PUBMED, RAMBLE, WORSTER


# --- correctness ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("completion", "expected"), [(MAJORITY, 1.0), (MINORITY, 0.0), (RAMBLE, 0.0), ("", 0.0)])
def test_correctness_is_exact_match_on_the_extracted_answer(completion: str, expected: float) -> None:
    assert correctness(completion, WORSTER, "C") == expected


def test_correctness_scores_an_answer_given_by_option_text() -> None:
    assert correctness("The answer is no.", PUBMED, "B") == 1.0
    assert correctness("The answer is Worster-Drought syndrome.", WORSTER, "C") == 1.0


def test_correctness_gives_zero_for_two_letters() -> None:
    assert correctness("The answer is A or C.", WORSTER, "C") == 0.0


# --- label encoding -------------------------------------------------------------------------------------------
def test_encode_decode_label_round_trip_keeps_option_texts() -> None:
    s = encode_label("C", WORSTER)
    assert json.loads(s) == {"label": "C", "options": WORSTER}
    assert decode_label(s) == ("C", WORSTER)


def test_encode_label_is_compact_and_keeps_unicode() -> None:
    s = encode_label("A", {"A": "Sjögren syndrome", "B": "β-thalassemia"})
    assert " " not in s.split('"options"')[0] and "ö" in s and "β" in s


def test_encode_label_rejects_a_letter_outside_the_options() -> None:
    with pytest.raises(ValueError, match="'E' is not among the option letters"):
        encode_label("E", WORSTER)


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("C", "not JSON"),
        ("", "not JSON"),
        ('["C"]', 'must be an object with "label" and "options"'),
        ('{"label": "C"}', 'must be an object with "label" and "options"'),
        ('{"label": "C", "options": []}', "non-empty object of letter -> text"),
        ('{"label": "C", "options": {"A": 1}}', "non-empty object of letter -> text"),
        ('{"label": "E", "options": {"A": "x", "B": "y"}}', "'E' is not among the option letters"),
        ('{"label": null, "options": {"A": "x"}}', "None is not among"),
        (None, "must be a JSON string"),
    ],
)
def test_decode_label_says_what_is_wrong(field, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_label(field)


# --- TRL reward --------------------------------------------------------------------------------------------
def test_trl_reward_scores_string_completions_per_row() -> None:
    prompts = ["q1", "q1", "q2", "q2"]
    completions = [MAJORITY, MINORITY, "The answer is no.", "The answer is maybe."]
    labels = ["C", "C", "B", "B"]
    options = [WORSTER, WORSTER, PUBMED, PUBMED]
    assert trl_reward(prompts, completions, label=labels, options=options) == [1.0, 0.0, 1.0, 0.0]


def test_trl_reward_reads_chat_format_completions() -> None:
    prompts = [[{"role": "user", "content": "q"}]] * 2
    completions = [[{"role": "assistant", "content": MAJORITY}], [{"role": "assistant", "content": [{"type": "text", "text": MINORITY}]}]]
    assert trl_reward(prompts, completions, label=["C", "C"], options=[WORSTER, WORSTER]) == [1.0, 0.0]


def test_trl_reward_accepts_options_as_json_strings_and_struct_padding() -> None:
    padded = {**PUBMED, "D": None, "E": None}  # datasets pads dict columns to the union of keys
    out = trl_reward(["q", "q"], ["The answer is B.", "The answer is D."], label=["B", "B"], options=[json.dumps(PUBMED), padded])
    assert out == [1.0, 0.0]


def test_trl_reward_takes_an_encoded_label_without_options_column() -> None:
    out = trl_reward(["q"], ["The answer is Moebius syndrome."], label=[encode_label("A", WORSTER)])
    assert out == [1.0]


def test_trl_reward_is_logged_as_correctness() -> None:
    # TRL names reward columns with getattr(func, "__name__") (trl.trainer.utils.get_callable_name).
    assert trl_reward.__name__ == "correctness" and online_vote_reward.__name__ == "online_vote"


def test_trl_reward_logs_answer_diversity_per_prompt_group() -> None:
    logged: dict[str, float] = {}
    completions = ["The answer is A.", "The answer is A.", "The answer is B.", "The answer is C.", "The answer is C.", "no idea"]
    trl_reward(["p"] * 3 + ["q"] * 3, completions, label=["A"] * 6, options=[WORSTER] * 6, log_metric=logged.__setitem__)
    assert logged["answers/distinct"] == pytest.approx((2 + 1) / 2)
    assert logged["answers/all_agree"] == 0.0
    assert logged["answers/valid_share"] == pytest.approx((1 + 2 / 3) / 2)


# --- online vote (TTRL-style ablation) ------------------------------------------------------------------------
def test_online_vote_rewards_the_group_majority() -> None:
    prompts = ["p"] * 4 + ["q"] * 4
    completions = [MAJORITY, MAJORITY, MINORITY, RAMBLE, "The answer is yes.", "The answer is no.", "The answer is no.", "The answer is B."]
    options = [WORSTER] * 4 + [PUBMED] * 4
    assert online_vote_reward(prompts, completions, options=options) == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]


def test_online_vote_gives_zero_to_a_group_without_valid_answers() -> None:
    assert online_vote_reward(["p"] * 3, [RAMBLE, "", "The answer is E."], options=[WORSTER] * 3) == [0.0, 0.0, 0.0]


def test_online_vote_rewards_a_collapsed_group_fully() -> None:
    """The collapse the paper shows (Fig. 6): identical wrong answers earn full reward under an online vote."""
    assert online_vote_reward(["p"] * 4, [MINORITY] * 4, options=[WORSTER] * 4) == [1.0] * 4
    assert trl_reward(["p"] * 4, [MINORITY] * 4, label=["C"] * 4, options=[WORSTER] * 4) == [0.0] * 4


def test_prompt_groups_are_runs_of_equal_prompts() -> None:
    assert prompt_groups(["a", "a", "b", "b", "b", "a"]) == [range(0, 2), range(2, 5), range(5, 6)]
    assert prompt_groups([]) == []


# --- group statistics -------------------------------------------------------------------------------------------
def test_group_stats_of_an_even_split() -> None:
    s = group_stats(["A", "A", "B", "B"], "q0")  # the tie goes to the seeded draw of medssr.label.vote (tests/test_vote.py)
    assert s["distinct"] == 2 and s["entropy"] == pytest.approx(math.log(2)) and s["all_agree"] == 0.0
    assert s["majority"] == "B" and s["majority_share"] == 0.5 and s["valid_share"] == 1.0


def test_group_stats_of_a_collapsed_group() -> None:
    s = group_stats(["C"] * 8)
    assert s == {"n": 8, "valid_share": 1.0, "distinct": 1, "entropy": 0.0, "all_agree": 1.0, "majority": "C", "majority_share": 1.0}


def test_group_stats_counts_entropy_over_valid_answers_only() -> None:
    s = group_stats(["A", None, "B", None])
    assert s["valid_share"] == 0.5 and s["entropy"] == pytest.approx(math.log(2)) and s["all_agree"] == 0.0
    assert s["majority_share"] == 0.25


def test_group_stats_of_no_valid_answer() -> None:
    assert group_stats([None, None]) | {} == {"n": 2, "valid_share": 0.0, "distinct": 0, "entropy": 0.0, "all_agree": 0.0,
                                               "majority": None, "majority_share": 0.0}
    assert group_stats([])["n"] == 0


def test_majority_with_real_vote_counts() -> None:
    assert majority(["C"] * 5 + ["A"] * 3, "q0") == "C"  # Table 15: 5/8 vs 3/8
    assert majority([None, None], "q0") is None


# --- trailing special tokens ---------------------------------------------------------------------------------
def test_strip_trailing_special_tokens_keeps_text_and_inner_tokens() -> None:
    assert strip_trailing_special_tokens("a<|im_end|>b\nC<|im_end|>\n<|endoftext|>  ") == "a<|im_end|>b\nC"
    assert strip_trailing_special_tokens("The answer is C.") == "The answer is C."


def test_trl_reward_reads_a_last_line_before_a_kept_eos() -> None:
    assert trl_reward(["p"], ["Reasoning.\nC</s>"], ["C"], [WORSTER]) == [1.0]
