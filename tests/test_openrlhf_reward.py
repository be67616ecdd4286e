"""OpenRLHF's reward file: the response after the prompt is scored, odd input never raises, it loads standalone."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from medssr.rl.rewards import encode_label
from tests.rollouts import F4_PROMPT, MAJORITY, MINORITY, PROMPT, PUBMED, RAMBLE, WORSTER

REPO = Path(__file__).resolve().parents[1]
REWARD_FILE = REPO / "medssr" / "rl" / "openrlhf_reward.py"


def load_reward_module():
    """Load the reward file the way OpenRLHF does: importlib by path, under an unrelated module name."""
    spec = importlib.util.spec_from_file_location("reward_module", REWARD_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- contract and scoring ----------------------------------------------------------------------------------------
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
@pytest.mark.parametrize("end", ["<|im_end|>", "</s>", "<|eot_id|>", "<|endoftext|>", "<|im_end|>\n<|endoftext|>", "<eos>"])
def test_a_bare_last_line_answer_before_special_tokens_scores(end: str) -> None:
    reward_func = load_reward_module().reward_func
    out = reward_func([F4_PROMPT + "Drooling and dysarthria point to it.\nC" + end], [F4_PROMPT], [encode_label("C", WORSTER)])
    assert out["rewards"].tolist() == [1.0]


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


# --- finished or cut off: read as votes and evaluation read it (complete=False on finish "length") ---------------
# OpenRLHF 0.11.2 decodes prompt + vLLM's response ids with skip_special_tokens=False: the EOS is there iff it stopped.
CUT_TEXTS = ["Drooling and dysarthria point to it.\nC", "Drooling and dysarthria point to it, so the answer is C"]


def _as_votes_read(texts: list[str], complete: bool) -> list[float]:
    """The oracle: the reward each response earns when read as the label stage and evaluation read it."""
    from medssr.answers import extract_answer

    return [1.0 if extract_answer(t, WORSTER, complete=complete) == "C" else 0.0 for t in texts]


def test_openrlhf_reward_reads_cut_off_and_finished_queries_as_votes_do(tiny_model_dir) -> None:
    from medssr.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    reward_func = load_reward_module().reward_func
    assert _as_votes_read(CUT_TEXTS, complete=False) != _as_votes_read(CUT_TEXTS, complete=True)  # the bare line differs
    prompt_ids = tok.encode(F4_PROMPT, add_special_tokens=False)
    for eos in (False, True):
        queries = [tok.decode(prompt_ids + tok.encode(t, add_special_tokens=False) + ([tok.eos_token_id] if eos else []),
                              skip_special_tokens=False) for t in CUT_TEXTS]
        got = [reward_func([q], [F4_PROMPT], [encode_label("C", WORSTER)])["rewards"].tolist()[0] for q in queries]
        assert got == _as_votes_read(CUT_TEXTS, complete=eos), f"eos={eos}"


@pytest.mark.parametrize("end", ["<|im_end|>", "<|eot_id|>", "</s>", "<end_of_turn>", "<|im_end|>\n<|endoftext|>"])
def test_openrlhf_reward_reads_a_bare_last_line_only_before_a_stop_token(end: str) -> None:
    reward_func = load_reward_module().reward_func
    label = encode_label("C", WORSTER)
    assert reward_func([F4_PROMPT + CUT_TEXTS[0] + end], [F4_PROMPT], [label])["rewards"].tolist() == [1.0]
    assert reward_func([F4_PROMPT + CUT_TEXTS[0]], [F4_PROMPT], [label])["rewards"].tolist() == [0.0]


def test_openrlhf_reward_reads_a_response_cut_after_a_non_stop_special_token_as_cut_off() -> None:
    out = load_reward_module().reward_func([F4_PROMPT + CUT_TEXTS[0] + "<|im_start|>"], [F4_PROMPT], [encode_label("C", WORSTER)])
    assert out["rewards"].tolist() == [0.0]
