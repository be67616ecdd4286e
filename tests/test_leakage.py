"""medssr.data.leakage: training rows that copy a benchmark question (by id, by normalised text) are removed."""

from __future__ import annotations

from pathlib import Path

import pytest

from medssr.config import load_params
from medssr.data.leakage import build_index, leak_reason, normalize_text, remove_leakage
from medssr.data.loaders import load_benchmarks, load_training_source

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "data" / "raw"
DECLARED = load_params(ROOT / "params.yaml").data.benchmarks
FORMATS = ROOT / "tests" / "data" / "train_formats"
TABLE = {"question": "stem", "options": "choices", "answer": "label", "answer_is": "text", "id": "qid"}


@pytest.fixture(scope="module")
def index(declared_benchmarks):
    return build_index(q for rows in declared_benchmarks.values() for q in rows)


def test_normalize_text_folds_case_unicode_and_punctuation():
    assert normalize_text("  Is Verubecestat effective for Alzheimer’s Disease?? ") == "is verubecestat effective for alzheimer s disease"
    assert normalize_text("Ｈ２Ｏ\u00a0level") == "h2o level"  # NFKC folds full-width forms


def test_benchmark_id_overlap_is_leakage(medmcqa_dev, index):
    assert leak_reason(medmcqa_dev["medmcqa-76eb0208-23fa-422d-aa0b-c4d5ec0fc3b5"], index) == "id"


def test_same_question_under_another_id_is_removed(medmcqa_dev, index):
    # the benchmark holds it as medmcqa-c836b9a4-... with "Cold H2SO4" / "Sandblasting" spelled differently
    q = medmcqa_dev["medmcqa-51baa169-5c84-4d0e-94fb-d21279cea570"]
    assert q.question == "Cleaning of base metal alloy is done by"
    assert leak_reason(q, index) == "text"


def test_generic_stem_with_other_options_is_kept(medmcqa_dev, index):
    q = medmcqa_dev["medmcqa-c02f03a6-ff92-4236-9883-f9e7bf1e02df"]  # "Which of the following is true?" as in two MMLU items
    assert normalize_text(q.question) in index.stems
    assert leak_reason(q, index) is None


def test_medmcqa_dev_leaves_the_manifests_usable_count(medmcqa_dev, index):
    kept, removed = remove_leakage(medmcqa_dev.values(), index)
    assert 2975 <= len(kept) <= 2983
    assert removed == {"medmcqa": {"id": 1200, "text": 7}}


def test_source_flags_count_as_leakage(index):
    kept, removed = remove_leakage(load_training_source("bioasq", RAW), index)
    assert len(kept) == 291 and removed["bioasq"]["id"] == 325  # 2 more share a stem and yes/no options
    kept, _ = remove_leakage(load_training_source("pubmedqa", RAW), index)
    assert len(kept) == 500


@pytest.fixture(scope="module")
def medqa_index():
    return build_index(load_benchmarks(DECLARED, RAW, names=["medqa"])["medqa"])


@pytest.mark.parametrize(("fmt", "file", "extra"), [
    ("medqa", "medqa.jsonl", {}), ("medmcqa", "medmcqa.json", {}), ("medmcqa_hf", "medmcqa_hf.jsonl", {}),
    ("columns", "table.json", {"columns": TABLE}),
])
def test_a_row_that_copies_a_benchmark_question_is_leakage_in_every_format(medqa_index, fmt, file, extra):
    from medssr.config import TrainColumnsCfg, TrainSourceCfg
    from medssr.data.loaders import load_train_source

    cols = TrainColumnsCfg(**extra["columns"]) if extra else None
    rows = load_train_source("mine", TrainSourceCfg(path=str(FORMATS / file), format=fmt, columns=cols), RAW)
    kept, removed = remove_leakage(rows, medqa_index)
    assert removed == {"mine": {"text": 1}}  # the third row is MedQA test question medqa-000786 under another id
    assert [q.answer for q in kept] == ["A", "C"]
