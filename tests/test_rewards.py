"""Rewards: exact match on the extracted answer, the online-vote ablation, collapse statistics, OpenRLHF's file."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

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

REPO = Path(__file__).resolve().parents[1]
REWARD_FILE = REPO / "medssr" / "rl" / "openrlhf_reward.py"

WORSTER = {"A": "Moebius syndrome", "B": "Spinal muscular atrophy (bulbar form)", "C": "Worster-Drought syndrome",
           "D": "Anterior opercular syndrome (acquired suprabulbar palsy)"}
PUBMED = {"A": "yes", "B": "no", "C": "maybe"}
# Endings of the paper's real majority / minority rollouts (Appendix E, Table 15).
MAJORITY = "Given the specific combination of symptoms ... **Worster-Drought syndrome** is the most likely diagnosis.\n" \
           "### Final Answer: The final answer is C."
MINORITY = "### Step 6: Final Diagnosis ... the most likely diagnosis is Moebius syndrome.\n### Final Answer The final answer is A."
RAMBLE = "The child has drooling. Drooling is common. The child has drooling. The child"  # SmolLM2-style, truncated
PROMPT = "<|im_start|>user\nQuestion: A 5-year-old child ...\nA. Moebius syndrome\n...<|im_end|>\n<|im_start|>assistant\n"


def load_reward_module():
    """Load the reward file the way OpenRLHF does: importlib by path, under an unrelated module name."""
    spec = importlib.util.spec_from_file_location("reward_module", REWARD_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def test_online_vote_breaks_ties_toward_the_smallest_letter() -> None:
    completions = ["The answer is C.", "The answer is A.", "The answer is C.", "The answer is A."]
    assert online_vote_reward(["p"] * 4, completions, options=[WORSTER] * 4) == [0.0, 1.0, 0.0, 1.0]


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
    s = group_stats(["A", "A", "B", "B"])
    assert s["distinct"] == 2 and s["entropy"] == pytest.approx(math.log(2)) and s["all_agree"] == 0.0
    assert s["majority"] == "A" and s["majority_share"] == 0.5 and s["valid_share"] == 1.0


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
    assert majority(["C"] * 5 + ["A"] * 3) == "C"  # Table 15: 5/8 vs 3/8
    assert majority([None, None]) is None


# --- OpenRLHF reward file ----------------------------------------------------------------------------------------
def check_contract(out: dict, n: int) -> None:
    assert set(out) == {"rewards", "scores", "extra_logs"}
    assert set(out["extra_logs"]) == {"valid_answer", "response_found"}
    for t in (out["rewards"], out["scores"], out["extra_logs"]["valid_answer"], out["extra_logs"]["response_found"]):
        assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.shape == (n,)


def test_openrlhf_reward_scores_the_response_after_the_prompt() -> None:
    reward_func = load_reward_module().reward_func
    label = encode_label("C", WORSTER)
    out = reward_func([PROMPT + MAJORITY], [PROMPT], [label])
    check_contract(out, 1)
    assert out["rewards"].tolist() == [1.0] and out["extra_logs"]["valid_answer"].tolist() == [1.0]
    assert reward_func([PROMPT + MINORITY + "<|im_end|>"], [PROMPT], [label])["rewards"].tolist() == [0.0]


def test_openrlhf_reward_ignores_answers_inside_the_prompt() -> None:
    prompt = PROMPT.replace("Question:", 'Finish with "The answer is C." Question:')
    out = load_reward_module().reward_func([prompt + RAMBLE], [prompt], [encode_label("C", WORSTER)])
    assert out["rewards"].tolist() == [0.0] and out["extra_logs"]["valid_answer"].tolist() == [0.0]


def test_openrlhf_reward_scores_answers_given_by_text() -> None:
    out = load_reward_module().reward_func(["Q? A. yes B. no C. maybe\nThe answer is no."], ["Q? A. yes B. no C. maybe\n"],
                                           [encode_label("B", PUBMED)])
    assert out["rewards"].tolist() == [1.0]


def test_openrlhf_reward_accepts_a_bare_letter_label() -> None:
    out = load_reward_module().reward_func([PROMPT + MAJORITY], [PROMPT], ["C"])
    assert out["rewards"].tolist() == [1.0]


ODD_INPUTS = [
    ("all_none", None, None, None, 1),
    ("empty_lists", [], [], [], 0),
    ("prompt_not_prefix", ["The answer is C."], ["something else"], [encode_label("C", WORSTER)], 1),
    ("non_string_label", [PROMPT + MAJORITY], [PROMPT], [3], 1),
    ("dict_label", [PROMPT + MAJORITY], [PROMPT], [{"label": "C"}], 1),
    ("garbage_json_label", [PROMPT + MAJORITY], [PROMPT], ['{"label": "C", "options": '], 1),
    ("empty_label", [PROMPT + MAJORITY], [PROMPT], [""], 1),
    ("none_items", [None], [None], [None], 1),
    ("bytes_query", [MAJORITY.encode()], [b""], [encode_label("C", WORSTER)], 1),
    ("strings_not_lists", PROMPT + MAJORITY, PROMPT, encode_label("C", WORSTER), 1),
    ("shorter_labels", [MAJORITY, MAJORITY], [PROMPT], [], 2),
    ("huge_text", ["The answer is " * 200_000 + "C."], [""], [encode_label("C", WORSTER)], 1),
    ("unicode", ["答案是 Ｃ。🎉 The answer is （Ｃ）"], [""], [encode_label("C", WORSTER)], 1),
    ("int_query", [12345], [None], ["C"], 1),
    ("nan_label", [MAJORITY], [""], [float("nan")], 1),
    ("tensor_like_label", [MAJORITY], [""], [torch.tensor([1])], 1),
]


@pytest.mark.parametrize(("queries", "prompts", "labels", "n"), [c[1:] for c in ODD_INPUTS], ids=[c[0] for c in ODD_INPUTS])
def test_openrlhf_reward_never_raises_on_odd_input(queries, prompts, labels, n: int) -> None:
    out = load_reward_module().reward_func(queries, prompts, labels)
    check_contract(out, n)
    assert all(v in (0.0, 1.0) for v in out["rewards"].tolist())


def test_openrlhf_reward_odd_inputs_score_as_expected() -> None:
    reward_func = load_reward_module().reward_func
    assert reward_func(["The answer is C."], ["something else"], [encode_label("C", WORSTER)])["rewards"].tolist() == [0.0]
    assert reward_func(["答案是 Ｃ。🎉 The answer is （Ｃ）"], [""], [encode_label("C", WORSTER)])["rewards"].tolist() == [1.0]
    assert reward_func([PROMPT + MAJORITY], [PROMPT], ['{"label": "C", "options": '])["rewards"].tolist() == [0.0]


def test_openrlhf_reward_file_loads_standalone_from_another_directory(tmp_path: Path) -> None:
    """OpenRLHF's environment may lack medssr: with site-packages but no editable install, cwd=/tmp, it still works."""
    site = sysconfig.get_paths()["purelib"]  # torch lives here; -S skips the .pth that installs medssr editable
    code = f"""
import sys, json, importlib.util
sys.path.append({site!r})
assert importlib.util.find_spec("medssr") is None, "medssr must not be importable for this test"
spec = importlib.util.spec_from_file_location("reward_module", {str(REWARD_FILE)!r})
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
label = json.dumps({{"label": "B", "options": {{"A": "yes", "B": "no", "C": "maybe"}}}})
out = mod.reward_func(["Q\\nThe answer is no."], ["Q\\n"], [label])
print(json.dumps({{"rewards": out["rewards"].tolist(), "valid": out["extra_logs"]["valid_answer"].tolist(),
                   "type": type(out["scores"]).__name__, "answers_from": sys.modules["medssr.answers"].__file__}}))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run([sys.executable, "-S", "-c", code], cwd="/tmp", env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["rewards"] == [1.0] and got["valid"] == [1.0] and got["type"] == "Tensor"
    assert got["answers_from"] == str(REPO / "medssr" / "answers.py")


# --- response only: the prompt never scores, trailing special tokens never hide the last line ---------------------
F4_PROMPT = ("<|im_start|>user\nYou are a professional medical expert ... Please format the final answer at the end of your "
             'response as: The answer is [LETTER]. Example: "The answer is A". Question: Which syndrome?\nA. Moebius syndrome\n'
             "B. Spinal muscular atrophy (bulbar form)\nC. Worster-Drought syndrome\n"
             "D. Anterior opercular syndrome (acquired suprabulbar palsy)<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("end", ["<|im_end|>", "</s>", "<|eot_id|>", "<|endoftext|>", "<|im_end|>\n<|endoftext|>", "<eos>"])
def test_a_bare_last_line_answer_before_special_tokens_scores(end: str) -> None:
    reward_func = load_reward_module().reward_func
    out = reward_func([F4_PROMPT + "Drooling and dysarthria point to it.\nC" + end], [F4_PROMPT], [encode_label("C", WORSTER)])
    assert out["rewards"].tolist() == [1.0]


def test_strip_trailing_special_tokens_keeps_text_and_inner_tokens() -> None:
    assert strip_trailing_special_tokens("a<|im_end|>b\nC<|im_end|>\n<|endoftext|>  ") == "a<|im_end|>b\nC"
    assert strip_trailing_special_tokens("The answer is C.") == "The answer is C."


def test_trl_reward_reads_a_last_line_before_a_kept_eos() -> None:
    assert trl_reward(["p"], ["Reasoning.\nC</s>"], ["C"], [WORSTER]) == [1.0]


def test_left_truncated_prompt_example_never_scores_for_label_a() -> None:
    """OpenRLHF left-truncated prompts: the query then opens inside the instruction, at 'The answer is A"'."""
    cut = F4_PROMPT[F4_PROMPT.index('The answer is A"') :]
    out = load_reward_module().reward_func([cut + "I cannot tell.<|im_end|>"], [F4_PROMPT], [encode_label("A", WORSTER)])
    assert out["rewards"].tolist() == [0.0] and out["extra_logs"]["response_found"].tolist() == [1.0]


def test_left_truncated_prompt_still_scores_its_response() -> None:
    cut = F4_PROMPT[F4_PROMPT.index("Question:") :]
    out = load_reward_module().reward_func([cut + "The answer is C.<|im_end|>"], [F4_PROMPT], [encode_label("C", WORSTER)])
    assert out["rewards"].tolist() == [1.0]


def test_decoded_prompt_with_changed_spaces_and_a_bos_is_still_cut_off() -> None:
    query = "<|begin_of_text|>" + F4_PROMPT.replace(" (bulbar form)", "(bulbar form)") + "The answer is C."
    out = load_reward_module().reward_func([query], [F4_PROMPT], [encode_label("C", WORSTER)])
    assert out["rewards"].tolist() == [1.0] and out["extra_logs"]["response_found"].tolist() == [1.0]


def test_a_query_without_its_prompt_scores_zero_and_says_so() -> None:
    query = 'Example: "The answer is A". I cannot tell.'
    out = load_reward_module().reward_func([query], [F4_PROMPT], [encode_label("A", WORSTER)])
    assert out["rewards"].tolist() == [0.0] and out["extra_logs"]["response_found"].tolist() == [0.0]


def test_a_rollout_repeating_the_prompt_is_scored_on_its_own_answer() -> None:
    reward_func = load_reward_module().reward_func
    parrot = F4_PROMPT.split("user\n", 1)[1].split("<|im_end|>")[0]
    assert reward_func([F4_PROMPT + parrot + "\nThe answer is C.<|im_end|>"], [F4_PROMPT], [encode_label("C", WORSTER)])["rewards"].tolist() == [1.0]
    assert reward_func([F4_PROMPT + parrot + "<|im_end|>"], [F4_PROMPT], [encode_label("A", WORSTER)])["rewards"].tolist() == [0.0]
