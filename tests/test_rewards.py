"""Rewards: exact match on the extracted answer, the online-vote ablation, collapse statistics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from medssr.answers import extract_answer
from medssr.rl.rewards import (
    correctness,
    decode_label,
    encode_label,
    group_stats,
    majority,
    online_vote_reward,
    prompt_groups,
    rollout_groups,
    strip_trailing_special_tokens,
    trl_finished,
    trl_reward,
)
from tests.rollouts import MAJORITY, MINORITY, PUBMED, RAMBLE, WORSTER

ROOT = Path(__file__).resolve().parents[1]


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


# --- finished or cut off: one reading of a rollout (votes and evaluation pass complete=False on finish "length") ---
# A bare last line is an answer only in a finished output; "... so the answer is C" is the example.
CUT_TEXTS = ["Drooling and dysarthria point to it.\nC", "Drooling and dysarthria point to it, so the answer is C"]


def _as_votes_read(texts: list[str], complete: bool, label: str = "C") -> list[float]:
    """The reward each text earns when read as the label stage and evaluation read it (the oracle)."""
    return [1.0 if extract_answer(t, WORSTER, complete=complete) == label else 0.0 for t in texts]


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from medssr.models import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


def _trl_completions(tok, texts: list[str], eos: bool) -> tuple[list[str], list[list[int]]]:
    """Completions as TRL 1.16 hands them over: ids up to and with the first EOS, text decoded without specials."""
    ids = [tok.encode(t, add_special_tokens=False) + ([tok.eos_token_id] if eos else []) for t in texts]
    return tok.batch_decode(ids, skip_special_tokens=True), ids


def test_trl_reward_reads_cut_off_and_finished_rollouts_as_votes_do(tok) -> None:
    assert _as_votes_read(CUT_TEXTS, complete=False) != _as_votes_read(CUT_TEXTS, complete=True)  # the bare line differs
    stops = [tok.eos_token_id, tok.pad_token_id]
    for eos in (False, True):
        completions, ids = _trl_completions(tok, CUT_TEXTS, eos)
        got = trl_reward(["p"] * 2, completions, label=["C"] * 2, options=[WORSTER] * 2, completion_ids=ids, stop_token_ids=stops)
        assert got == _as_votes_read(CUT_TEXTS, complete=eos), f"eos={eos}"


def test_online_vote_reads_a_cut_off_rollout_as_cut_off(tok) -> None:
    completions, ids = _trl_completions(tok, [CUT_TEXTS[0]] * 2, eos=False)
    got = online_vote_reward(["p"] * 2, completions, options=[WORSTER] * 2, completion_ids=ids, stop_token_ids=[tok.eos_token_id],
                             id=["q"] * 2, num_generations=2)
    assert got == [0.0, 0.0]  # no valid answer in the group: nothing to agree with


def test_trl_finished_follows_trls_truncation_rule() -> None:
    # TRL 1.16 GRPOTrainer._generate: truncated when ids[-1] not in [*eos_token_ids, pad_token_id]
    ids = [[5, 6, 2], [5, 6, 0], [5, 6, 7], [2, 5], []]
    assert trl_finished(ids, [2, 0], 5) == [True, True, False, False, False]
    assert trl_finished(None, None, 2) == [True, True]  # text only: nothing says it was cut


def test_trl_finished_refuses_ids_without_stop_ids() -> None:
    with pytest.raises(ValueError, match="without stop_token_ids"):
        trl_reward(["p"], ["C"], label=["C"], options=[WORSTER], completion_ids=[[51]])


def test_stage_reward_wrapper_reads_a_cut_off_rollout_as_cut_off(tok) -> None:
    from medssr.rl.trl_backend import make_reward_fn

    logged: dict[str, float] = {}
    fn = make_reward_fn("gold", num_generations=2, stop_token_ids=[tok.eos_token_id, tok.pad_token_id])
    texts = [CUT_TEXTS[0], CUT_TEXTS[0]]
    cut, cut_ids = _trl_completions(tok, texts[:1], eos=False)
    done, done_ids = _trl_completions(tok, texts[1:], eos=True)
    scores = fn(prompts=["p"] * 2, completions=cut + done, label=["C"] * 2, options=[json.dumps(WORSTER)] * 2,
                completion_ids=cut_ids + done_ids, log_metric=logged.__setitem__)
    assert scores == [0.0, 1.0]
    assert logged["medssr/accuracy"] == 0.5 and logged["medssr/valid_answer_share"] == 0.5  # metrics read as the reward did


# --- online vote groups: G rollouts of one draw of a question, in TRL's RepeatSampler order ----------------------
def test_online_vote_keeps_two_adjacent_copies_of_a_question_apart() -> None:
    """A question drawn twice into one batch (G=2 each) is two votes, not one tie over 2G broken against a pair."""
    completions = ["The answer is A.", "The answer is A.", "The answer is C.", "The answer is C."]
    got = online_vote_reward(["p"] * 4, completions, options=[WORSTER] * 4, id=["q1"] * 4, num_generations=2)
    assert got == [1.0] * 4


def test_stage_online_vote_and_its_metrics_group_by_question_and_g() -> None:
    from medssr.rl.trl_backend import make_reward_fn

    logged: dict[str, float] = {}
    fn = make_reward_fn("online_vote", num_generations=2, stop_token_ids=[2])
    completions = [[{"role": "assistant", "content": f"The answer is {x}."}] for x in "AACC"]
    scores = fn(prompts=["p"] * 4, completions=completions, label=["A"] * 4, options=[json.dumps(WORSTER)] * 4,
                completion_ids=[[9, 2]] * 4, id=["q1"] * 4, log_metric=logged.__setitem__)
    assert scores == [1.0] * 4
    assert logged["medssr/pseudo_label_agreement"] == 1.0 and logged["medssr/all_agree_share"] == 1.0


def test_rollout_groups_are_blocks_of_g_and_check_the_layout() -> None:
    assert rollout_groups(["p"] * 4, ["q1"] * 4, 2) == [range(0, 2), range(2, 4)]
    assert rollout_groups(["p"] * 4, None, 2) == [range(0, 2), range(2, 4)]
    assert rollout_groups(["p"] * 4) == [range(0, 4)]  # no G: runs of equal prompts (callers with texts only)
    with pytest.raises(ValueError, match="different ids"):
        rollout_groups(["p"] * 4, ["q1", "q2", "q2", "q2"], 2)
    with pytest.raises(ValueError, match="do not split into groups of num_generations=2"):
        rollout_groups(["p"] * 3, ["q1"] * 3, 2)


# --- the real trainer: its own stop ids reach the reward, and a step runs with it --------------------------------
def _tiny_trainer(tiny_model_dir, tmp_path):
    from medssr.config import load_params
    from medssr.data.loaders import load_medmcqa
    from medssr.rl import trl_backend
    from medssr.rl.data import examples_from_questions, load_prompt_template, to_trl_dataset
    from tests.conftest import RAW

    stage = {"max_steps": 1, "learning_rate": 1e-3, "beta": 0.0, "max_samples": 8}
    p = load_params(ROOT / "params.yaml", {"train.num_generations": 2, "train.per_device_batch_size": 2, "train.max_completion_length": 8,
                                           "train.save_steps": 100, "train.stage1": stage, "train.stage2": stage})
    examples, _ = examples_from_questions(load_medmcqa(RAW)[:4], "real")
    return trl_backend.build_trainer(tiny_model_dir, to_trl_dataset(examples, load_prompt_template()), "gold", p.train, p.train.stage1,
                                     run_dir=tmp_path / "run")


def test_trainer_binds_its_eos_and_pad_ids_to_the_stage_reward(tiny_model_dir, tmp_path, one_torch_thread) -> None:
    trainer = _tiny_trainer(tiny_model_dir, tmp_path)
    fn = trainer.reward_funcs[0]
    assert fn.stop_token_ids == [*trainer.eos_token_ids, trainer.processing_class.pad_token_id]
    cut, cut_ids = _trl_completions(trainer.processing_class, CUT_TEXTS[:1], eos=False)
    done, done_ids = _trl_completions(trainer.processing_class, CUT_TEXTS[:1], eos=True)
    scores = fn(prompts=["p"] * 2, completions=cut + done, label=["C"] * 2, options=[json.dumps(WORSTER)] * 2,
                completion_ids=cut_ids + done_ids)
    assert scores == [0.0, 1.0]


def test_a_grpo_step_runs_with_the_bound_stage_reward(tiny_model_dir, tmp_path, one_torch_thread) -> None:
    trainer = _tiny_trainer(tiny_model_dir, tmp_path)
    trainer.train()
    step = trainer.state.log_history[0]
    assert trainer.state.global_step == 1 and "reward" in step and "medssr/valid_answer_share" in step
