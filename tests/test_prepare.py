"""medssr.data.prepare: the prepare stage end to end on data/raw (its parts: test_leakage, test_categories, test_reasoning)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from medssr.config import ConfigError, load_params
from medssr.data.loaders import load_training_source
from medssr.data.prepare import run_prepare, stratified_cap, summary_line
from medssr.data.reasoning import is_reasoning_heavy
from medssr.data.validate import validate_files
from medssr.records import CATEGORIES, RecordError, read_questions

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "data" / "raw"
DECLARED = load_params(ROOT / "params.yaml").data.benchmarks


def _params_file(tmp: Path, data_yaml: str, benchmarks: dict | None = None) -> Path:
    """The shipped params.yaml with ``data_yaml`` (indented ``data:`` lines) over its data section; ``benchmarks`` are
    declared besides the shipped ones."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    raw["data"].update(yaml.safe_load(f"data:\n{data_yaml}")["data"] or {})
    raw["data"]["benchmarks"].update(benchmarks or {})
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


# --- caps ------------------------------------------------------------------------------------------

def test_stratified_cap_keeps_each_sources_share(medmcqa_dev):
    rows = list(medmcqa_dev.values())[:300] + load_training_source("bioasq", RAW)[:100]
    capped = stratified_cap(rows, 40, seed=0)
    assert Counter(q.source for q in capped) == {"medmcqa": 30, "bioasq": 10}
    assert stratified_cap(rows, None, seed=0) == rows


# --- the stage ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prepare")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp}/mlflow.db")
    (tmp / "prepared" / "benchmarks").mkdir(parents=True)
    (tmp / "prepared" / "benchmarks" / "dropped.jsonl").write_text("{}\n")  # a benchmark no longer declared
    params = load_params(_params_file(tmp, "  max_seeds: 300\n"))
    summary = run_prepare(params, RAW, tmp / "prepared", tmp / "reports" / "prepare.json")
    yield tmp, summary
    mp.undo()


def test_prepare_writes_every_output(prepared):
    tmp, _ = prepared
    out = tmp / "prepared"
    for rel in ["train.jsonl", "seeds.jsonl", "raredis_sub.jsonl", "entities.jsonl", *[f"benchmarks/{n}.jsonl" for n in DECLARED]]:
        assert (out / rel).stat().st_size > 0, rel
    ok, report = validate_files([out / "train.jsonl", out / "seeds.jsonl", out / "raredis_sub.jsonl",
                                 *[out / "benchmarks" / f"{n}.jsonl" for n in DECLARED]])
    assert ok, report


def test_prepare_writes_one_file_per_declared_benchmark_and_drops_undeclared_ones(prepared):
    tmp, summary = prepared
    assert sorted(p.stem for p in (tmp / "prepared" / "benchmarks").glob("*.jsonl")) == sorted(DECLARED)
    assert summary["benchmarks"] == {"bioasq": 782, "medmcqa": 1200, "medqa": 1273, "medxpertqa": 2450, "mmlu": 1089,
                                     "pubmedqa": 500, "nejm": 603, "lancet": 412, "medbullets": 308}


def test_prepare_without_declared_benchmarks_is_a_params_error(tmp_path):
    path = _params_file(tmp_path, "  benchmarks: {}\n")
    with pytest.raises(ConfigError, match="data.benchmarks is empty"):
        run_prepare(load_params(path), RAW, tmp_path / "p", tmp_path / "r.json", log_mlflow=False)


def test_a_missing_raw_dir_is_an_error_naming_the_argument_and_its_param(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^--raw-dir \(data\.raw_dir\): .*/nowhere is not a directory"):
        run_prepare(load_params(ROOT / "params.yaml"), tmp_path / "nowhere", tmp_path / "p", tmp_path / "r.json", log_mlflow=False)


def test_a_newly_declared_benchmark_gets_leakage_removal_and_rare_tagging(tmp_path):
    """A user's file + one params entry: its questions leave the training rows and its rare ones join RareDis-Sub."""
    bioasq = load_training_source("bioasq", RAW, drop_known_test=True)[:40]
    mine = [{"id": f"mine-{i}", "question": q.render(), "gold": q.answer} for i, q in enumerate(bioasq)]
    (tmp_path / "mine.json").write_text(json.dumps(mine), encoding="utf-8")
    path = _params_file(tmp_path, "  train_sources: [bioasq]\n",
                        {"my_set": {"file": f"{tmp_path}/mine.json", "display": "My set"}})
    summary = run_prepare(load_params(path), RAW, tmp_path / "p", tmp_path / "r.json", log_mlflow=False)
    assert summary["benchmarks"]["my_set"] == 40 and (tmp_path / "p" / "benchmarks" / "my_set.jsonl").exists()
    assert summary["leakage_removed_by_reason"]["bioasq"]["text"] == 2 + 40
    assert summary["rare"]["my_set"] == {"ours": summary["raredis_sub_by_source"].get("my_set", 0), "paper": None}


def test_prepare_train_rows_are_leakage_free(prepared):
    tmp, summary = prepared
    train = read_questions(tmp / "prepared" / "train.jsonl")
    assert summary["train_by_source"] == {"medmcqa": 2976, "headqa": 6600, "pubmedqa": 500, "bioasq": 291}
    bench_ids = {q.id for n in DECLARED for q in read_questions(tmp / "prepared" / "benchmarks" / f"{n}.jsonl")}
    assert not bench_ids & {q.id for q in train}
    assert summary["leakage_removed"] == {"medmcqa": 1207, "headqa": 0, "pubmedqa": 500, "bioasq": 327}


def test_prepare_seeds_are_reasoning_heavy_training_rows(prepared):
    tmp, summary = prepared
    seeds = read_questions(tmp / "prepared" / "seeds.jsonl")
    train_ids = {q.id for q in read_questions(tmp / "prepared" / "train.jsonl")}
    assert len(seeds) == summary["seeds"] == 300  # data.max_seeds
    assert all(q.id in train_ids and is_reasoning_heavy(q) for q in seeds)


def test_prepare_raredis_sub_rows_carry_disease_and_category(prepared):
    tmp, summary = prepared
    sub = read_questions(tmp / "prepared" / "raredis_sub.jsonl")
    assert len(sub) == summary["raredis_sub"] > 300
    assert all(q.rare_disease and q.category in CATEGORIES and q.split == "test" for q in sub)
    assert sum(summary["categories"].values()) == len(sub)
    assert {n: r["paper"] for n, r in summary["rare"].items()} == {
        "medqa": 154, "medmcqa": 45, "mmlu": 57, "pubmedqa": 63, "bioasq": 144, "medbullets": 52, "medxpertqa": 301,
        "nejm": 65, "lancet": 70}
    assert sum(summary["raredis_sub_by_source"].values()) == len(sub)


def test_prepare_report_and_mlflow_metrics(prepared):
    tmp, summary = prepared
    assert json.loads((tmp / "reports" / "prepare.json").read_text()) == summary
    import mlflow

    runs = mlflow.search_runs(experiment_names=["medssr"], filter_string="tags.medssr_stage = 'prepare'")
    assert len(runs) == 1
    row = runs.iloc[0]
    assert row["metrics.prepare/train_rows"] == summary["train_rows"]
    assert row["metrics.prepare/rare/medqa"] == summary["rare"]["medqa"]["ours"]
    assert row["metrics.prepare/leakage_removed/medmcqa"] == 1207
    assert "prepare:" in summary_line(summary) and "RareDis-Sub" in summary_line(summary)


def test_prepare_caps_train_rows_by_source_share(tmp_path):
    path = _params_file(tmp_path, "  max_train: 100\n  train_sources: [pubmedqa, bioasq]\n")
    summary = run_prepare(load_params(path), RAW, tmp_path / "p", tmp_path / "r.json", log_mlflow=False)
    assert summary["train_rows"] == 100 and summary["train_pool_rows"] == 500 + 291
    assert summary["train_by_source"] == {"pubmedqa": 63, "bioasq": 37}


def test_extra_raredis_rows_join_raredis_sub_leave_training_and_bad_rows_are_quarantined(tmp_path):
    bioasq = load_training_source("bioasq", RAW, drop_known_test=True)[:5]
    extra = [{"id": f"redisqa-{i}", "question": q.render(), "gold": q.answer} for i, q in enumerate(bioasq)]
    extra[4]["gold"] = "C"  # not among A-B: quarantined when data.strict is false
    (tmp_path / "redisqa.json").write_text(json.dumps(extra, indent=1), encoding="utf-8")
    path = _params_file(tmp_path, f"  strict: false\n  train_sources: [bioasq]\n"
                                  f"  extra_raredis: [{tmp_path}/redisqa.json]\n")
    summary = run_prepare(load_params(path), RAW, tmp_path / "p", tmp_path / "r.json", log_mlflow=False)
    assert summary["extra_raredis"] == {"redisqa": 4} and summary["quarantined"] == 1
    assert "record 5: gold: 'C' is not among options A-B" in (tmp_path / "p" / "rejected.jsonl").read_text()
    assert summary["leakage_removed_by_reason"]["bioasq"]["text"] == 2 + 4  # the 4 extra rows left training
    sub = {q.id: q for q in read_questions(tmp_path / "p" / "raredis_sub.jsonl")}
    assert all(f"redisqa-{i}" in sub and sub[f"redisqa-{i}"].category in CATEGORIES for i in range(4))


def test_strict_mode_stops_at_the_first_bad_row(tmp_path):
    (tmp_path / "bad.json").write_text('[{"id": "x-1", "question": "Is it?\\nA. yes\\nB. no", "gold": "E"}]', encoding="utf-8")
    path = _params_file(tmp_path, f"  extra_raredis: [{tmp_path}/bad.json]\n")
    with pytest.raises(RecordError, match=r"bad.json:1: record 1: gold: 'E' is not among options A-B"):
        run_prepare(load_params(path), RAW, tmp_path / "p", tmp_path / "r.json", log_mlflow=False)


def test_llm_reasoning_and_category_classifiers_run_through_the_generator_backend(tmp_path, monkeypatch, mlflow_store):
    """data.reasoning_filter/category_classifier: llm send prompt F.3 and the category prompt to synth.generator."""
    import importlib.util

    from medssr.config import load_params
    from tests.llm_servers import FakeOpenAIServer

    def responder(req):
        text = req.prompt
        if "MEMORIZATION" in text:
            return "<Reasoning>" if "most likely" in text.lower() else "<Memorization>"
        return "Diagnosis"

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with FakeOpenAIServer(responder=responder) as srv:
        params = load_params(ROOT / "params.yaml", overrides={
            "data.train_sources": ["bioasq"],
            "data.reasoning_filter": "llm", "data.category_classifier": "llm", "synth.cache_dir": str(tmp_path / "cache"),
            "synth.generator": {"backend": "openai_compatible", "model": "m", "base_url": srv.base_url, "concurrency": 8,
                                "max_retries": 0, "timeout_s": 10.0, "structured": False}})
        spec = importlib.util.spec_from_file_location("prepare_stage", ROOT / "stages/prepare.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        reasoning, category = mod.llm_classifiers(params)
        from medssr.data.prepare import run_prepare

        run_prepare(params, RAW, tmp_path / "prepared", tmp_path / "prepare.json", classifier=reasoning, category_classifier=category)
        n_calls = len(srv.requests)
    raredis = [json.loads(x) for x in (tmp_path / "prepared/raredis_sub.jsonl").read_text().splitlines()]
    assert raredis and all(r["category"] == "Diagnosis" for r in raredis)
    assert n_calls >= len(raredis) + 291  # every BioASQ training row was classified by the LLM (F.3)
    assert reasoning.fallbacks == 0 and category.fallbacks == 0


# --- empty inputs fail naming the file (#13.7) -------------------------------------------------------------------
def test_an_empty_extra_raredis_file_is_an_error_naming_it(tmp_path):
    (tmp_path / "empty.json").write_text("[]", encoding="utf-8")
    path = _params_file(tmp_path, f"  extra_raredis: [{tmp_path}/empty.json]\n")
    with pytest.raises(RecordError, match=rf"^{tmp_path}/empty.json: <file>: no records; fix the file or remove it from data.extra_raredis, "
                                          r"or set data.allow_empty: true$"):
        run_prepare(load_params(path), RAW, tmp_path / "p", tmp_path / "r.json", log_mlflow=False)


def test_an_empty_benchmark_file_is_an_error_naming_it_and_its_declaration(tmp_path):
    (tmp_path / "mine.json").write_text("[\n]\n", encoding="utf-8")
    path = _params_file(tmp_path, "", {"my_set": {"file": f"{tmp_path}/mine.json"}})
    with pytest.raises(RecordError, match=rf"^{tmp_path}/mine.json: <file>: no records; fix the file or remove it from data.benchmarks.my_set"):
        run_prepare(load_params(path), RAW, tmp_path / "p", tmp_path / "r.json", log_mlflow=False)


def test_a_file_whose_records_were_all_quarantined_says_so(tmp_path):
    (tmp_path / "bad.json").write_text('[{"id": "x-1", "question": "Is it?\\nA. yes\\nB. no", "gold": "E"}]', encoding="utf-8")
    path = _params_file(tmp_path, f"  strict: false\n  extra_raredis: [{tmp_path}/bad.json]\n")
    with pytest.raises(RecordError, match=r"bad.json: <file>: all 1 records were quarantined \(see rejected.jsonl\)"):
        run_prepare(load_params(path), RAW, tmp_path / "p", tmp_path / "r.json", log_mlflow=False)


def test_data_allow_empty_lets_an_empty_extra_file_pass(tmp_path):
    (tmp_path / "empty.json").write_text("[]", encoding="utf-8")
    path = _params_file(tmp_path, f"  train_sources: [bioasq]\n  allow_empty: true\n"
                                  f"  extra_raredis: [{tmp_path}/empty.json]\n")
    summary = run_prepare(load_params(path), RAW, tmp_path / "p", tmp_path / "r.json", log_mlflow=False)
    assert summary["extra_raredis"] == {"empty": 0}


# --- training data declared in params (#17.1, #17.2) ----------------------------------------------------------------
FORMATS = ROOT / "tests" / "data" / "train_formats"
TABLE = {"question": "stem", "options": "choices", "answer": "label", "answer_is": "text", "id": "qid"}


@pytest.fixture(scope="module")
def prepared_formats(tmp_path_factory):
    """prepare on the hand-written fixtures, one data.train entry per format, asking for 43,000 rows (a paper profile)."""
    tmp = tmp_path_factory.mktemp("formats")
    train = {"medqa_f": {"path": str(FORMATS / "medqa.jsonl"), "format": "medqa"},
             "table_f": {"path": str(FORMATS / "table.json"), "format": "columns", "columns": TABLE},
             "medmcqa_f": {"path": str(FORMATS / "medmcqa.json"), "format": "medmcqa"},
             "medmcqa_hf_f": {"path": str(FORMATS / "medmcqa_hf.jsonl"), "format": "medmcqa_hf"}}
    path = _params_file(tmp, f"  max_train: 43000\n"
                             f"  extra_raredis: [{{path: {FORMATS}/redisqa.jsonl, format: redisqa}}]\n")
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    raw["data"]["train"] = train
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    summary = run_prepare(load_params(path), RAW, tmp / "p", tmp / "r.json", log_mlflow=False)
    return tmp, summary


def test_prepare_counts_every_declared_source_and_removes_leakage_in_each(prepared_formats):
    tmp, summary = prepared_formats
    assert summary["loaded_by_source"] == {"medqa_f": 3, "table_f": 3, "medmcqa_f": 3, "medmcqa_hf_f": 3}
    assert summary["leakage_removed_by_reason"] == {"medqa_f": {"text": 1}, "table_f": {"text": 1}, "medmcqa_f": {"text": 1},
                                                    "medmcqa_hf_f": {}}
    # MedMCQA from its official file and from Hugging Face is the same three rows (same MedMCQA ids): kept once
    assert summary["duplicates_removed"] == {"medqa_f": 0, "table_f": 0, "medmcqa_f": 0, "medmcqa_hf_f": 3}
    assert summary["train_by_source"] == {"medqa_f": 2, "table_f": 2, "medmcqa_f": 2}
    train = read_questions(tmp / "p" / "train.jsonl")
    assert len({q.id for q in train}) == len(train) == 6


def test_prepare_picks_reasoning_heavy_seeds_from_every_declared_format(prepared_formats):
    tmp, summary = prepared_formats
    seeds = read_questions(tmp / "p" / "seeds.jsonl")
    assert summary["seeds_by_source"] == {"medqa_f": 1, "table_f": 1, "medmcqa_f": 1}  # the chest-pain vignette, not scurvy
    assert all(q.question.startswith("A 62-year-old man") for q in seeds)


def test_prepare_says_how_many_rows_stage_two_will_get_when_fewer_than_asked(prepared_formats):
    _, summary = prepared_formats
    assert summary["train_asked"] == 43000
    assert summary["train_note"] == (
        "stage II will train on 6 real rows (asked 43,000 by data.max_train): the declared training data (medqa_f 3, "
        "table_f 3, medmcqa_f 3, medmcqa_hf_f 3) has 6 after leakage removal (3 removed), 3 of them picked as "
        "reasoning-heavy seeds; declare MedQA train and MedMCQA train under data.train (see the commented entries in "
        "params/paper-*.yaml) to reach it")
    assert summary_line(summary).endswith("\n[prepare] " + summary["train_note"])


def test_a_redisqa_file_joins_raredis_sub_with_its_own_diseases(prepared_formats):
    tmp, summary = prepared_formats
    assert summary["extra_raredis"] == {"redisqa": 2}
    sub = {q.id: q for q in read_questions(tmp / "p" / "raredis_sub.jsonl")}
    assert sub["redisqa-test-1"].rare_disease == "Fabry disease" and sub["redisqa-test-1"].category in CATEGORIES
    assert sub["redisqa-test-2"].rare_disease == "Wilson disease"


def test_the_shipped_default_asks_for_no_volume_and_gets_no_note(prepared):
    _, summary = prepared
    assert summary["train_asked"] is None and summary["train_note"] is None
    assert summary["duplicates_removed"] == {"medmcqa": 0, "headqa": 0, "pubmedqa": 0, "bioasq": 0}


def test_train_sources_picks_declared_entries_and_names_the_declared_ones_otherwise(tmp_path):
    path = _params_file(tmp_path, "  train_sources: [medqa]\n")
    with pytest.raises(ConfigError, match=r"data\.train_sources\[0\]: 'medqa' is not declared in data\.train \(declared: "
                                          r"medmcqa, headqa, pubmedqa, bioasq\)"):
        load_params(path)


def test_a_bad_extra_raredis_mapping_names_its_key(tmp_path):
    path = _params_file(tmp_path, "  extra_raredis: [{path: r.parquet, format: medqa}]\n")
    with pytest.raises(ConfigError, match=r"data\.extra_raredis\[0\]\.format: unknown format 'medqa'; one of benchmark, redisqa"):
        load_params(path)


@pytest.mark.parametrize("profile", ["paper-qwen3-8b", "paper-llama3.1-8b"])
def test_paper_profiles_ask_prepare_for_the_rows_stage_two_trains_on_and_show_how_to_declare_them(profile, tmp_path):
    from medssr.config import TrainSourceCfg, build
    from medssr.profiles import apply_profile

    target = tmp_path / "params.yaml"
    target.write_text((ROOT / "params.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    apply_profile(profile, params_path=target)
    params = load_params(target)
    assert params.data.max_train == params.train.stage2.max_samples == 43000
    # the commented data.train entries are valid declarations once uncommented
    text = (ROOT / "params" / f"{profile}.yaml").read_text(encoding="utf-8")
    entries = [line[len("  #   "):] for line in text.splitlines() if line.startswith("  #   ") and ": {path:" in line]
    declared = yaml.safe_load("\n".join(entries))
    assert {"medqa_train", "medmcqa_train"} <= set(declared)
    assert declared["medqa_train"]["format"] == "medqa" and declared["medmcqa_train"]["format"] == "medmcqa"
    for name, entry in declared.items():
        build(TrainSourceCfg, entry, f"data.train.{name}")
