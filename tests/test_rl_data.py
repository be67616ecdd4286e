"""GRPO training data: F.4 prompts, reward targets (offline majority vs gold), bad input, TRL and OpenRLHF exports."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from medssr.data.loaders import load_medmcqa
from medssr.records import Question, RecordError, write_jsonl
from medssr.rl.data import (
    RLDataError,
    chat_prompt,
    drop_long_prompts,
    examples_from_questions,
    fill_to,
    load_examples,
    load_prompt_template,
    load_train_prompt,
    openrlhf_rows,
    prompt_token_ids,
    render_prompt,
    to_trl_dataset,
    write_openrlhf_jsonl,
)
from medssr.synth.prompts import Prompt


@pytest.fixture(scope="module")
def medmcqa() -> list[Question]:
    from tests.conftest import RAW

    return load_medmcqa(RAW)[:40]


def labeled(q: Question, majority: str | None, i: int) -> Question:
    """A real MedMCQA row dressed as a labeled synthetic question (the label stage's output shape)."""
    votes = [majority] * 5 + [None] * 3 if majority else [None] * 8
    return dataclasses.replace(q, id=f"syn-{i:03d}", source="synthetic", split="synthetic", votes=votes, majority=majority,
                               agreement=5 / 8 if majority else 0.0, n_valid=5 if majority else 0)


@pytest.fixture
def sets(tmp_path, medmcqa) -> tuple[Path, Path]:
    """20 voted synthetic rows + 1 without a majority, and 20 real rows, on disk."""
    syn, real = tmp_path / "synthetic.jsonl", tmp_path / "train.jsonl"
    write_jsonl(syn, [labeled(q, "BCDA"[i % 4], i) for i, q in enumerate(medmcqa[:20])] + [labeled(medmcqa[20], None, 20)])
    write_jsonl(real, medmcqa[20:40])
    return syn, real


def test_prompt_is_the_f4_template_filled_with_stem_and_option_lines(medmcqa):
    template = load_prompt_template()
    (ex,), _ = examples_from_questions([medmcqa[0]], "real")
    (msg,) = chat_prompt(ex, template)
    assert msg["role"] == "user"
    assert msg["content"].startswith("You are a professional medical expert")
    assert 'The answer is [LETTER]' in msg["content"]
    assert msg["content"].endswith(medmcqa[0].render())
    assert "\nA. " in msg["content"] and "{question}" not in msg["content"]


# sha256[:16] of the user message medssr rendered for these rows before Prompt.render became the one renderer
PINNED = {0: "8ae019ed182a736f", 7: "29882f4b2be627f2", 19: "339a1799875690e8", 33: "5695f40767c5329f", "odd": "4ae2578e474f9898"}


def test_rendered_training_prompts_are_byte_identical_to_before(medmcqa):
    odd = dataclasses.replace(medmcqa[0], question="  Which {question} holds {braces} and \\1 ?  ", options={"A": "{x}", "B": "y  "})
    rows = {0: medmcqa[0], 7: medmcqa[7], 19: medmcqa[19], 33: medmcqa[33], "odd": odd}
    for template in (load_train_prompt(), load_prompt_template()):  # the Prompt, and its text as medssr.rl.run passes it
        for key, q in rows.items():
            (ex,), _ = examples_from_questions([q], "real")
            (msg,) = chat_prompt(ex, template)
            assert hashlib.sha256(msg["content"].encode()).hexdigest()[:16] == PINNED[key], key


def test_training_prompt_is_rendered_by_the_prompt_files_own_renderer(medmcqa):
    prompt = load_train_prompt()
    assert isinstance(prompt, Prompt) and prompt.placeholders == {"question"}
    q = medmcqa[0].render()
    assert render_prompt(q, prompt) == prompt.render(question=q).strip() == render_prompt(q, prompt.template)


def test_a_prompt_file_with_another_placeholder_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "f4_extra.txt"
    path.write_text("# version: 1\nAnswer {question} in {language}.\n", encoding="utf-8")
    with pytest.raises(RLDataError, match=r"f4_extra\.txt: .*\['language', 'question'\].*only \{question\}"):
        load_prompt_template(path)


def test_synthetic_target_is_the_offline_majority_not_the_generator_key(medmcqa):
    q = labeled(medmcqa[0], "C", 0)
    assert q.answer == "A"
    (ex,), _ = examples_from_questions([q], "synthetic")
    assert ex.label == "C" and ex.agreement == pytest.approx(5 / 8)


def test_real_target_is_the_gold_answer(medmcqa):
    (ex,), _ = examples_from_questions([medmcqa[0]], "real")
    assert ex.label == medmcqa[0].answer


def test_synthetic_rows_without_a_majority_are_skipped_and_counted(sets, medmcqa):
    syn, real = sets
    examples, stats = load_examples("synthetic", syn, real)
    assert len(examples) == 20 and stats["synthetic_rows"] == 21 and stats["synthetic_unlabeled"] == 1


def test_empty_labeled_set_is_an_error_naming_the_file(tmp_path, medmcqa):
    path = tmp_path / "synthetic.jsonl"
    write_jsonl(path, [labeled(q, None, i) for i, q in enumerate(medmcqa[:3])])
    with pytest.raises(RLDataError, match=rf"{path}: empty synthetic training set \(3 rows, 3 without a label\)"):
        load_examples("synthetic", path, tmp_path / "unused.jsonl")


def test_missing_labeled_file_says_which_stage_makes_it(tmp_path):
    with pytest.raises(RLDataError, match="synthetic.jsonl: no such file: the labeled synthetic set"):
        load_examples("synthetic", tmp_path / "synthetic.jsonl", tmp_path / "train.jsonl")


def test_label_outside_the_options_names_file_line_and_field(tmp_path, medmcqa):
    path = tmp_path / "synthetic.jsonl"
    row = labeled(medmcqa[0], "B", 0).to_dict()
    row["majority"] = "E"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(RecordError, match=rf"{path}:1: majority: 'E' is not among options A-D"):
        load_examples("synthetic", path, tmp_path / "unused.jsonl")


def test_label_outside_the_options_in_memory_names_the_row(medmcqa):
    q = dataclasses.replace(medmcqa[0], answer="F")
    with pytest.raises(RLDataError, match=rf"id {q.id}: answer 'F' is not among options A-D"):
        examples_from_questions([q], "real", "train.jsonl")


def test_mixed_set_pools_both_kinds_in_a_seeded_order(sets, medmcqa):
    syn, real = sets
    a, stats = load_examples("mixed", syn, real, seed=3)
    b, _ = load_examples("mixed", syn, real, seed=3)
    c, _ = load_examples("mixed", syn, real, seed=4)
    assert [e.id for e in a] == [e.id for e in b] != [e.id for e in c]
    assert stats["by_kind"] == {"synthetic": 20, "real": 20}
    capped, stats = load_examples("mixed", syn, real, max_samples=10, seed=3)
    assert [e.id for e in capped] == [e.id for e in a[:10]] and stats["examples"] == 10


def test_trl_dataset_carries_label_and_options_columns(medmcqa):
    template = load_prompt_template()
    examples, _ = examples_from_questions(medmcqa[:4], "real")
    ds = to_trl_dataset(examples, template)
    assert set(ds.column_names) == {"prompt", "label", "options", "id", "kind"}
    assert ds[0]["prompt"][0]["role"] == "user"
    assert json.loads(ds[1]["options"]) == medmcqa[1].options and ds[1]["label"] == medmcqa[1].answer


def test_openrlhf_rows_hold_chat_prompt_and_a_decodable_label(tmp_path, medmcqa):
    from medssr.rl.rewards import decode_label

    template = load_prompt_template()
    examples, _ = examples_from_questions([labeled(medmcqa[0], "D", 0)], "synthetic")
    (row,) = openrlhf_rows(examples, template)
    assert row["prompt"] == chat_prompt(examples[0], template) and row["datasource"] == "synthetic"
    assert decode_label(row["label"]) == ("D", medmcqa[0].options)
    path = tmp_path / "rl" / "stage1.jsonl"
    assert write_openrlhf_jsonl(examples, template, path) == 1
    assert json.loads(path.read_text()) == row


def test_prompts_longer_than_max_prompt_length_are_dropped(tiny_model_dir, medmcqa):
    from medssr.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    template = load_prompt_template()
    examples, _ = examples_from_questions(medmcqa[:6], "real")
    kept, dropped = drop_long_prompts(examples, template, tok, 10_000)
    assert (len(kept), dropped) == (6, 0)
    lengths = sorted(len(tok.apply_chat_template(chat_prompt(e, template), add_generation_prompt=True, return_dict=False)) for e in examples)
    kept, dropped = drop_long_prompts(examples, template, tok, lengths[2])
    assert (len(kept), dropped) == (3, 3)


def test_prompt_tokens_are_counted_as_openrlhf_tokenizes_the_rendered_text(tiny_model_dir, medmcqa):
    from medssr.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    template = load_prompt_template()
    (ex,), _ = examples_from_questions(medmcqa[:1], "real")
    text = tok.apply_chat_template(chat_prompt(ex, template), add_generation_prompt=True, tokenize=False)
    assert prompt_token_ids(ex, template, tok) == tok(text, add_special_tokens=False)["input_ids"]


def test_fill_to_repeats_every_question_evenly_when_there_are_fewer(medmcqa):
    examples, _ = examples_from_questions(medmcqa[:5], "real")
    rows = fill_to(examples, 12, seed=3)
    counts = sorted([r.id for r in rows].count(e.id) for e in examples)
    assert len(rows) == 12 and counts == [2, 2, 2, 3, 3]


def test_fill_to_takes_a_seeded_subset_when_there_are_more(medmcqa):
    examples, _ = examples_from_questions(medmcqa[:10], "real")
    a, b = fill_to(examples, 4, seed=1), fill_to(examples, 4, seed=1)
    assert [e.id for e in a] == [e.id for e in b] and len({e.id for e in a}) == 4
    assert [e.id for e in fill_to(examples, 4, seed=2)] != [e.id for e in a]


def test_fill_to_reshuffles_each_pass(medmcqa):
    examples, _ = examples_from_questions(medmcqa[:6], "real")
    rows = fill_to(examples, 12, seed=0)
    first, second = [e.id for e in rows[:6]], [e.id for e in rows[6:]]
    assert sorted(first) == sorted(second) and first != second


def test_fill_to_refuses_an_empty_pool():
    with pytest.raises(RLDataError, match="no training examples"):
        fill_to([], 4)
