"""Loaders read the real files in data/raw into Question records with the manifest's counts and answers."""

from __future__ import annotations

import dataclasses
import gzip
import json
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

from medssr.config import ConfigError, TrainColumnsCfg, TrainSourceCfg, bundled_train_sources, load_params
from medssr.data.loaders import (
    BenchmarkRecordError,
    TrainRecordError,
    load_benchmark_file,
    load_benchmarks,
    load_train_source,
    load_training_source,
    split_from_name,
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
    with pytest.raises(KeyError, match="medmcqa.*others are declared in data.train"):
        load_training_source("medqa-train", RAW)


# --- training data declared in params, in the formats people have (#17.1) -----------------------------------------
FORMATS = ROOT / "tests" / "data" / "train_formats"  # hand-written: the same three questions in each layout
TABLE_COLUMNS = {"question": "stem", "options": "choices", "answer": "label", "answer_is": "text", "id": "qid"}


def _decl(**kw) -> TrainSourceCfg:
    columns = kw.pop("columns", None)
    return TrainSourceCfg(columns=TrainColumnsCfg(**columns) if columns else None, **kw)


def _hf_rows() -> list[dict]:
    return [json.loads(line) for line in (FORMATS / "medmcqa_hf.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def saved_formats(tmp_path_factory) -> Path:
    """The Hugging Face MedMCQA fixture rows written by `datasets` itself: parquet, save_to_disk (Dataset and DatasetDict)."""
    from datasets import Dataset, DatasetDict

    tmp = tmp_path_factory.mktemp("hf")
    ds = Dataset.from_list(_hf_rows())
    ds.to_parquet(str(tmp / "train-00000-of-00001.parquet"))
    ds.save_to_disk(str(tmp / "medmcqa_hf_disk"))
    DatasetDict({"train": ds, "validation": ds.select([0])}).save_to_disk(str(tmp / "medmcqa_hf_dict"))
    return tmp


def _every_format(saved: Path) -> dict[str, TrainSourceCfg]:
    return {
        "medqa": _decl(path=str(FORMATS / "medqa.jsonl"), format="medqa"),
        "medmcqa": _decl(path=str(FORMATS / "medmcqa.json"), format="medmcqa"),
        "medmcqa_hf": _decl(path=str(FORMATS / "medmcqa_hf.jsonl"), format="medmcqa_hf"),
        "parquet": _decl(path=str(saved / "train-00000-of-00001.parquet"), format="medmcqa_hf"),
        "hf_disk": _decl(path=str(saved / "medmcqa_hf_disk"), format="medmcqa_hf", split="train"),
        "hf_dict": _decl(path=str(saved / "medmcqa_hf_dict"), format="medmcqa_hf", split="train"),
        "table": _decl(path=str(FORMATS / "table.json"), format="columns", columns=TABLE_COLUMNS),
        "parquet_columns": _decl(path=str(saved / "train-00000-of-00001.parquet"), format="columns",
                                 columns={"options": ["opa", "opb", "opc", "opd"], "answer": "cop", "answer_is": "index0"}),
    }


def test_every_training_format_reads_the_same_questions(saved_formats):
    expected = [(q.question, q.options, q.answer) for q in load_train_source("medqa", _every_format(saved_formats)["medqa"], RAW)]
    assert [a for _, _, a in expected] == ["A", "C", "D"] and expected[2][1]["D"] == "Factor XII"
    for name, decl in _every_format(saved_formats).items():
        rows = load_train_source(name, decl, RAW)
        assert [(q.question, q.options, q.answer) for q in rows] == expected, name
        assert {q.source for q in rows} == {name} and {q.split for q in rows} == {"train"}


def test_medmcqa_official_huggingface_parquet_and_saved_datasets_give_identical_records(saved_formats):
    """cop 1-4 in the official JSON, 0-3 in the Hugging Face layout: the same Question records either way."""
    declared = _every_format(saved_formats)
    official = [q.to_dict() for q in load_train_source("mm", declared["medmcqa"], RAW)]
    assert [q["id"] for q in official] == ["medmcqa-fx-0001", "medmcqa-fx-0002", "medmcqa-fx-0003"]  # MedMCQA's own ids
    assert official[0]["meta"] == {"orig_split": "train", "choice_type": "single", "subject": "Medicine", "topic": "Cardiology"}
    for name in ("medmcqa_hf", "parquet", "hf_disk", "hf_dict"):
        decl = dataclasses.replace(declared[name], split="train")
        assert [q.to_dict() for q in load_train_source("mm", decl, RAW)] == official, name


def test_medqa_rows_keep_meta_info_and_get_ids_that_cannot_clash_with_benchmark_ids():
    rows = load_train_source("medqa", _decl(path=str(FORMATS / "medqa.jsonl"), format="medqa"), RAW)
    assert [q.id for q in rows] == ["medqa-train-1", "medqa-train-2", "medqa-train-3"]  # the benchmark's are medqa-000001...
    assert rows[0].meta == {"orig_split": "train", "meta_info": "step2&3"}


def test_the_split_comes_from_the_file_name_unless_declared():
    assert split_from_name("phrases_no_exclude_train.jsonl") == "train"
    assert split_from_name("dev.json.gz") == "dev" and split_from_name("validation-00000-of-00001.parquet") == "validation"
    rows = load_train_source("m", _decl(path=str(FORMATS / "medmcqa.json"), format="medmcqa", split="dev"), RAW)
    assert {q.meta["orig_split"] for q in rows} == {"dev"}


def test_redisqa_rows_carry_their_rare_disease():
    rows = load_train_source("redisqa", _decl(path=str(FORMATS / "redisqa.jsonl"), format="redisqa"), RAW, label="test")
    assert [(q.rare_disease, q.answer, q.split) for q in rows] == [("Fabry disease", "A", "test"), ("Wilson disease", "B", "test")]
    assert rows[0].options["A"] == "Alpha-galactosidase A"


def test_max_rows_reads_only_the_first_records(saved_formats):
    for decl in (_decl(path=str(FORMATS / "medqa.jsonl"), format="medqa", max_rows=2),
                 _decl(path=str(saved_formats / "train-00000-of-00001.parquet"), format="medmcqa_hf", max_rows=2)):
        assert [q.answer for q in load_train_source("x", decl, RAW)] == ["A", "C"]


def test_the_bundled_sets_are_declared_in_the_shipped_params_like_any_other():
    shipped = load_params(ROOT / "params.yaml").data
    assert shipped.train == bundled_train_sources() and shipped.train_sources is None
    assert {n: d.format for n, d in shipped.train.items()} == {
        "medmcqa": "medmcqa", "headqa": "headqa", "pubmedqa": "pubmedqa_pqal", "bioasq": "bioasq_yesno"}


# errors name the file, the line or record, and the field
def test_a_missing_training_file_names_its_params_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"^data\.train\.medqa_train\.path: {tmp_path}/medqa/train\.jsonl: no such file"):
        load_train_source("medqa_train", _decl(path="medqa/train.jsonl", format="medqa"), tmp_path)


def test_an_unknown_column_names_the_key_the_file_and_its_columns(saved_formats):
    decl = _decl(path=str(FORMATS / "table.json"), format="columns", columns=dict(TABLE_COLUMNS, answer="gold"))
    with pytest.raises(ConfigError, match=r"^data\.train\.mine\.columns\.answer: unknown column 'gold': not in .*table\.json "
                                          r"\(its first row has: qid, stem, choices, label\)$"):
        load_train_source("mine", decl, RAW)
    decl = _decl(path=str(saved_formats / "train-00000-of-00001.parquet"), format="columns", columns={"question": "stem"})
    with pytest.raises(ConfigError, match=r"^data\.train\.mine\.columns\.question: unknown column 'stem': not in .*\.parquet "
                                          r"\(its columns are: question, exp, cop, opa"):
        load_train_source("mine", decl, RAW)


def test_a_file_in_another_layout_than_declared_is_a_params_error():
    with pytest.raises(ConfigError, match=r"^data\.train\.x\.format: medmcqa rows have a 'opa' column; .*medqa\.jsonl \(its first "
                                          r"row has: question, answer, options, meta_info, answer_idx\)"):
        load_train_source("x", _decl(path=str(FORMATS / "medqa.jsonl"), format="medmcqa"), RAW)


def test_a_bad_cop_names_file_line_and_field():
    with pytest.raises(TrainRecordError) as err:
        load_train_source("x", _decl(path=str(FORMATS / "medmcqa_bad_cop.json"), format="medmcqa"), RAW)
    assert str(err.value) == f"{FORMATS}/medmcqa_bad_cop.json:2: cop: 5 is not an answer index (1-4, 1 = A)"


def test_a_bad_cop_in_a_parquet_file_names_the_record(tmp_path):
    from datasets import Dataset

    rows = _hf_rows()
    rows[1]["cop"] = -1  # how the Hugging Face MedMCQA test split marks its missing answers
    Dataset.from_list(rows).to_parquet(str(tmp_path / "test.parquet"))
    with pytest.raises(TrainRecordError, match=r"test\.parquet: record 2: cop: -1 is not an answer index \(0-3, 0 = A\)$"):
        load_train_source("x", _decl(path=str(tmp_path / "test.parquet"), format="medmcqa_hf"), RAW)


def test_a_bad_row_is_quarantined_when_not_strict():
    rejected: list[dict] = []
    rows = load_train_source("x", _decl(path=str(FORMATS / "medmcqa_bad_cop.json"), format="medmcqa"), RAW, strict=False,
                             rejected=rejected)
    assert [q.id for q in rows] == ["medmcqa-fx-0002"]
    assert rejected == [{"file": f"{FORMATS}/medmcqa_bad_cop.json", "record": None, "line": 2,
                         "error": f"{FORMATS}/medmcqa_bad_cop.json:2: cop: 5 is not an answer index (1-4, 1 = A)"}]


def test_a_medqa_answer_that_is_not_an_option_names_line_and_field(tmp_path):
    lines = (FORMATS / "medqa.jsonl").read_text(encoding="utf-8").splitlines()
    lines[2] = lines[2].replace('"answer_idx": "D"', '"answer_idx": "E"')
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(TrainRecordError, match=r"train\.jsonl:3: answer_idx: 'E' is not among options A, B, C, D$"):
        load_train_source("x", _decl(path="train.jsonl", format="medqa"), tmp_path)


def test_a_saved_dataset_dict_needs_its_split_named(saved_formats):
    with pytest.raises(ConfigError, match=r"data\.train\.x\.path: .*medmcqa_hf_dict holds the splits train, validation; name one"):
        load_train_source("x", _decl(path=str(saved_formats / "medmcqa_hf_dict"), format="medmcqa_hf"), RAW)


@pytest.mark.parametrize(("entry", "message"), [
    ("{path: x.jsonl}", "data.train.mine.format: missing; one of medqa, medmcqa, medmcqa_hf"),
    ("{path: x.jsonl, format: medqa_jsonl}", "data.train.mine.format: unknown format 'medqa_jsonl'; one of medqa"),
    ("{format: medqa}", "data.train.mine.path: missing"),
    ("{path: x.parquet, format: columns}", "data.train.mine.columns: missing (format: columns needs"),
    ("{path: x.jsonl, format: medqa, columns: {question: q}}", "data.train.mine.columns: only for format: columns"),
    ("{path: x.jsonl, format: columns, columns: {answer_is: position}}", "data.train.mine.columns.answer_is: expected one of"),
    ("{path: x.jsonl, format: medqa, max_rows: 0}", "data.train.mine.max_rows: expected int >= 1"),
])
def test_a_bad_training_declaration_names_its_key(tmp_path, entry, message):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    raw["data"]["train"]["mine"] = yaml.safe_load(entry)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_params(path)


@pytest.mark.parametrize(("options", "answer", "answer_is"), [
    ({"B": "Vitamin B12", "A": "Vitamin A", "C": "Vitamin C"}, "C", "letter"),
    (["Vitamin A", "Vitamin B12", "Vitamin C"], 3, "index1"),
    (["Vitamin A", "Vitamin B12", "Vitamin C"], "2", "index0"),
])
def test_a_generic_table_reads_option_lists_or_mappings_and_each_answer_encoding(tmp_path, options, answer, answer_is):
    row = {"q": "Deficiency of which vitamin causes scurvy?", "opts": options, "ans": answer}
    (tmp_path / "t.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    decl = _decl(path="t.jsonl", format="columns", columns={"question": "q", "options": "opts", "answer": "ans", "answer_is": answer_is})
    (q,) = load_train_source("t", decl, tmp_path)
    assert q.options == {"A": "Vitamin A", "B": "Vitamin B12", "C": "Vitamin C"} and q.answer == "C" and q.id == "t-train-1"
