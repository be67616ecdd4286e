"""Loaders read the real files in data/raw into Question records with the manifest's counts and answers."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from medssr.config import ConfigError, load_params
from medssr.data.loaders import (
    BenchmarkRecordError,
    load_benchmark_file,
    load_benchmarks,
    load_training_source,
    split_options,
)

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "data" / "raw"
DECLARED = load_params(ROOT / "params.yaml").data.benchmarks

MANIFEST_COUNTS = {"medqa": 1273, "medmcqa": 1200, "mmlu": 1089, "pubmedqa": 500, "bioasq": 782, "medbullets": 308,
                   "nejm": 603, "lancet": 412, "medxpertqa": 2450}
MANIFEST_GOLD = {
    "medqa": {"A": 353, "B": 309, "C": 346, "D": 265},
    "medmcqa": {"A": 399, "B": 307, "C": 262, "D": 232},
    "pubmedqa": {"A": 276, "B": 169, "C": 55},
    "bioasq": {"A": 570, "B": 212},
    "nejm": {"A": 121, "B": 138, "C": 106, "D": 123, "E": 115},
    "lancet": {"A": 56, "B": 104, "C": 160, "D": 92},
}
N_OPTIONS = {"medqa": 4, "medmcqa": 4, "mmlu": 4, "pubmedqa": 3, "bioasq": 2, "medbullets": 5, "nejm": 5, "lancet": 4,
             "medxpertqa": 10}


@pytest.fixture(scope="module")
def benchmarks():
    return load_benchmarks(DECLARED, RAW)


def test_the_shipped_params_declare_the_papers_nine_benchmarks_with_table_2_names():
    assert {n: d.display for n, d in DECLARED.items() if d.paper} == {
        "bioasq": "BioASQ", "medmcqa": "MedMCQA", "medqa": "MedQA", "medxpertqa": "MedXpertqa", "mmlu": "MMLU",
        "pubmedqa": "PubMedQA", "nejm": "NEJM", "lancet": "Lancet", "medbullets": "Medbullets"}


def _params_with_benchmarks(tmp: Path, entries: str) -> Path:
    """The shipped params.yaml with ``entries`` (YAML lines) as its whole data.benchmarks declaration."""
    shipped = (ROOT / "params.yaml").read_text(encoding="utf-8")
    start = shipped.index("  benchmarks:\n") + len("  benchmarks:\n")
    end = shipped.index("\n\n", start) + 1
    path = tmp / "params.yaml"
    path.write_text(shipped[:start] + entries + shipped[end:], encoding="utf-8")
    return path


def test_a_declared_benchmark_is_loaded_from_its_file_without_python_changes(tmp_path):
    rows = json.load(gzip.open(RAW / DECLARED["lancet"].file))[:4]
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "mine.json").write_text(json.dumps(rows), encoding="utf-8")
    params = _params_with_benchmarks(tmp_path, "    my_set: {file: benchmarks/mine.json, display: My set}\n")
    got = load_benchmarks(load_params(params).data.benchmarks, tmp_path)
    assert list(got) == ["my_set"] and [q.id for q in got["my_set"]] == [r["id"] for r in rows]
    assert {q.source for q in got["my_set"]} == {"my_set"}


def test_a_declared_benchmark_whose_file_is_missing_names_the_params_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data\.benchmarks\.medqa\.file: .*test_short_medqa\.json\.gz: no such file"):
        load_benchmarks(DECLARED, tmp_path, names=["medqa"])


def test_an_undeclared_benchmark_name_is_a_params_error():
    with pytest.raises(ConfigError, match="unknown benchmark 'medqa2'; declared in data.benchmarks: bioasq"):
        load_benchmarks(DECLARED, RAW, names=["medqa2"])


@pytest.mark.parametrize(("entry", "message"), [
    ("{display: X}", "data.benchmarks.mine.file: missing"),
    ("{file: x.json, paper_rare: -1}", "data.benchmarks.mine.paper_rare: expected int >= 0"),
    ("{file: x.json, colour: red}", "data.benchmarks.mine.colour: unknown key"),
])
def test_a_bad_benchmark_declaration_names_its_key(tmp_path, entry, message):
    params = _params_with_benchmarks(tmp_path, f"    mine: {entry}\n")
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_params(params)


@pytest.mark.parametrize("name", ["raredis_sub", "avg", "avg_paper", "med/qa"])
def test_benchmark_names_that_clash_with_rare_sets_or_eval_keys_are_rejected(tmp_path, name):
    params = _params_with_benchmarks(tmp_path, f"    '{name}': {{file: x.json}}\n")
    with pytest.raises(ConfigError, match=f"data.benchmarks.{name}: "):
        load_params(params)


def test_medxpertqa_has_ten_options_a_to_j_and_its_gold_is_one_of_them(benchmarks):
    qs = benchmarks["medxpertqa"]
    assert all(list(q.options) == list("ABCDEFGHIJ") for q in qs)
    assert Counter(q.answer for q in qs)["J"] == 257


@pytest.fixture(scope="module")
def by_id(benchmarks):
    return {q.id: q for rows in benchmarks.values() for q in rows}


@pytest.mark.parametrize("name", list(MANIFEST_COUNTS))
def test_benchmark_record_counts_match_manifest(benchmarks, name):
    assert len(benchmarks[name]) == MANIFEST_COUNTS[name]


@pytest.mark.parametrize("name", list(MANIFEST_GOLD))
def test_benchmark_gold_distribution_matches_manifest(benchmarks, name):
    assert dict(Counter(q.answer for q in benchmarks[name])) == MANIFEST_GOLD[name]


@pytest.mark.parametrize("name", list(N_OPTIONS))
def test_every_benchmark_question_has_its_option_count(benchmarks, name):
    assert {len(q.options) for q in benchmarks[name]} == {N_OPTIONS[name]}


def test_benchmark_ids_are_unique_across_all_benchmarks(benchmarks):
    ids = [q.id for rows in benchmarks.values() for q in rows]
    assert len(ids) == len(set(ids))


def test_options_are_split_from_the_stem(by_id):
    q = by_id["medqa-000786"]
    assert q.question.endswith("Which of the following factors is most likely defective in this patient?")
    assert q.options == {"A": "Factor VII", "B": "Factor VIII", "C": "Factor IX", "D": "Factor XII"}
    assert q.answer == "D"


def test_stray_quote_line_after_the_options_is_dropped(by_id):
    # 38 MedQA rows end with '\n"'; it must not stick to option D
    assert by_id["medqa-000504"].options["D"] == "Corticosteroid therapy"


def test_roman_numeral_lines_stay_in_the_stem(by_id):
    q = by_id["mmlu-college_biology-013"]
    assert q.question.endswith("I. DNA\nII. Protein\nIII. RNA")
    assert q.options["D"] == "I, II, and III"


def test_yes_no_maybe_options_are_parsed(by_id):
    assert by_id["pubmedqa-20297950"].options == {"A": "yes", "B": "no", "C": "maybe"}
    assert by_id["bioasq-55030a6ce9bde6963400000f"].options == {"A": "yes", "B": "no"}


def test_option_text_spanning_lines_is_kept_with_its_option():
    stem, options = split_options("Pick one\nA. first line\ncontinues here\nB. second")
    assert stem == "Pick one"
    assert options == {"A": "first line\ncontinues here", "B": "second"}


def test_question_without_an_option_block_is_an_error():
    with pytest.raises(ValueError, match="no option block"):
        split_options("What is the answer? There are no options.")


def test_any_benchmark_file_loads_plain_or_gzipped(tmp_path):
    rows = json.load(gzip.open(RAW / DECLARED["medbullets"].file))[:5]
    plain = tmp_path / "test_short_newset.json"
    plain.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    qs = load_benchmark_file(plain)
    assert [q.id for q in qs] == [r["id"] for r in rows]
    assert {q.source for q in qs} == {"newset"}
    assert all(len(q.options) == 5 for q in qs)


def test_bad_benchmark_record_error_names_file_line_and_record(tmp_path):
    rows = json.load(gzip.open(RAW / DECLARED["medqa"].file))[:3]
    rows[1]["gold"] = "E"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(rows, indent=4), encoding="utf-8")
    with pytest.raises(BenchmarkRecordError) as err:
        load_benchmark_file(path)
    assert f"{path}:9: record 2: gold: 'E' is not among options A-D" == str(err.value)


def test_medmcqa_cop_is_one_based():
    rows = {q.id: q for q in load_training_source("medmcqa", RAW)}
    q = rows["medmcqa-45258d3d-b974-44dd-a161-c3fccbdadd88"]  # cop 1 in the raw file
    assert q.answer == "A"
    assert q.options["A"].startswith("Impulse through myelinated fibers is slower")
    assert q.meta["choice_type"] == "multi"


def test_medmcqa_dev_has_every_row_and_cop_distribution():
    rows = load_training_source("medmcqa", RAW)
    assert len(rows) == 4183
    assert dict(Counter(q.answer for q in rows)) == {"A": 1348, "B": 1085, "C": 925, "D": 825}


def test_headqa_drops_the_165_image_questions():
    rows = load_training_source("headqa", RAW)
    assert len(rows) == 2657 + 1366 + 2742 - 165
    assert Counter(q.meta["orig_split"] for q in rows) == {"train": 2589, "dev": 1336, "test": 2675}


def test_headqa_ra_is_mapped_to_the_position_letter():
    rows = {q.id: q for q in load_training_source("headqa", RAW)}
    q = rows["headqa-Cuaderno_2013_1_B-1"]  # ra "3", five answers
    assert q.answer == "C" and q.options["C"] == "They can be added."
    assert len(q.options) == 5


def test_pubmedqa_official_test_pmids_are_flagged_and_droppable():
    rows = load_training_source("pubmedqa", RAW)
    assert sum(q.meta["known_test"] for q in rows) == 500
    usable = load_training_source("pubmedqa", RAW, drop_known_test=True)
    assert len(usable) == 500
    q = next(q for q in rows if q.id == "pubmedqa-21645374")
    assert q.answer == "A" and q.options == {"A": "yes", "B": "no", "C": "maybe"}
    assert q.question == "Do mitochondria play a role in remodelling lace plant leaves during programmed cell death?"


def test_bioasq_rows_in_the_medssr_test_are_flagged():
    rows = load_training_source("bioasq", RAW)
    assert len(rows) == 618
    assert len(load_training_source("bioasq", RAW, drop_known_test=True)) == 293
    assert Counter(q.answer for q in rows) == {"A": 395, "B": 223}


@pytest.mark.parametrize("name", ["medmcqa", "headqa", "pubmedqa", "bioasq"])
def test_training_ids_are_unique_and_prefixed(name):
    rows = load_training_source(name, RAW)
    assert len({q.id for q in rows}) == len(rows)
    assert all(q.id.startswith(f"{name}-") and q.source == name for q in rows)


def test_unknown_training_source_names_the_known_ones():
    with pytest.raises(KeyError, match="medmcqa"):
        load_training_source("medqa-train", RAW)
