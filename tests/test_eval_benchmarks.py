"""eval/benchmarks.py: the evaluated set follows data.benchmarks, display names, and RareDis-Sub sliced per category."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest

from eval.benchmarks import (
    category_quota,
    display_names,
    eval_benchmarks,
    evaluated_names,
    load_declared,
    load_evaluated,
    paper_benchmarks,
    seeded_slice,
    stratified_slice,
)
from medssr.config import load_params
from medssr.data.loaders import load_benchmark_file
from medssr.records import CATEGORIES, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "data" / "raw" / "benchmarks"
PAPER_NINE = ["bioasq", "medmcqa", "medqa", "medxpertqa", "mmlu", "pubmedqa", "nejm", "lancet", "medbullets"]


@pytest.fixture(scope="module")
def medqa():
    return load_benchmark_file(RAW / "test_short_medqa.json.gz")


def _rare_set(questions, sizes: dict[str, int]):
    """Questions tagged with categories: ``sizes[c]`` of category c, interleaved so no category is contiguous."""
    labels = [c for c, n in sizes.items() for _ in range(n)]
    labels = labels[::2] + labels[1::2]
    return [dataclasses.replace(q, id=f"raredis-{q.id}", rare_disease="Fabry disease", category=c)
            for q, c in zip(questions, labels, strict=False)]


# --- which benchmarks, under which names ------------------------------------------------------------

def test_embedded_default_evaluates_every_declared_benchmark_and_raredis_sub_from_the_prepared_dir():
    p = load_params(ROOT / "params.yaml")
    files = eval_benchmarks(p, "some/prepared")
    assert list(files) == [*PAPER_NINE, "raredis_sub"]
    assert files["nejm"] == "some/prepared/benchmarks/nejm.jsonl"
    assert files["raredis_sub"] == "some/prepared/raredis_sub.jsonl"


def test_an_explicit_eval_benchmarks_mapping_is_used_as_given():
    p = load_params(ROOT / "params.yaml", overrides={"eval.benchmarks": {"mine": "my/file.json"}})
    assert eval_benchmarks(p, "some/prepared") == {"mine": "my/file.json"}


def test_display_names_follow_the_papers_table_2_and_fall_back_to_the_name():
    p = load_params(ROOT / "params.yaml", overrides={"eval.benchmarks": {"medqa": "a.jsonl", "raredis_sub": "r.jsonl",
                                                                         "mine": "m.json"}})
    names = display_names(p)
    assert (names["medqa"], names["mmlu"], names["medxpertqa"], names["nejm"]) == ("MedQA", "MMLU", "MedXpertqa", "NEJM")
    assert names["raredis_sub"] == "RareDis-Sub" and names["mine"] == "mine"


def test_the_headline_average_covers_the_benchmarks_declared_paper_true():
    p = load_params(ROOT / "params.yaml")
    assert paper_benchmarks(p) == PAPER_NINE
    p.data.benchmarks["mine"] = dataclasses.replace(p.data.benchmarks["medqa"], paper=False, display="Mine")
    assert "mine" not in paper_benchmarks(p) and "mine" in evaluated_names(p)


# --- the allocation rule ----------------------------------------------------------------------------

def test_quota_gives_equal_shares_capped_by_size_and_refills_from_larger_categories():
    assert category_quota({"a": 10, "b": 1, "c": 5}, 9) == {"a": 4, "b": 1, "c": 4}


def test_quota_remainder_goes_to_the_categories_with_most_questions_left():
    assert category_quota({"a": 2, "b": 9, "c": 5}, 7) == {"a": 2, "b": 3, "c": 2}
    assert category_quota({"a": 10, "b": 1, "c": 5}, 2) == {"a": 1, "b": 0, "c": 1}


def test_quota_never_exceeds_what_there_is():
    assert category_quota({"a": 3, "b": 0, "c": 2}, 100) == {"a": 3, "b": 0, "c": 2}


# --- stratified slicing of RareDis-Sub ---------------------------------------------------------------

def test_sixteen_rare_questions_cover_all_seven_categories(medqa):
    sizes = dict(zip(CATEGORIES, [90, 299, 10, 43, 631, 182, 133], strict=True))  # today's RareDis-Sub, scaled down below
    rare = _rare_set(medqa, {c: max(1, n // 2) for c, n in sizes.items()})
    got = stratified_slice(rare, 16, seed=0)
    # 16 // 7 = 2 each; the 2 left go to the two categories with most questions left (Diagnosis, Causes)
    assert Counter(q.category for q in got) == {"Symptoms": 2, "Causes": 3, "Affects": 2, "Related disorders": 2,
                                                 "Diagnosis": 3, "Treatment": 2, "Others": 2}


def test_stratified_slice_is_reproducible_keeps_file_order_and_changes_with_the_seed(medqa):
    rare = _rare_set(medqa, {"Symptoms": 40, "Causes": 40, "Affects": 3})
    a, b = stratified_slice(rare, 10, seed=5), stratified_slice(rare, 10, seed=5)
    assert [q.id for q in a] == [q.id for q in b]
    picked = {q.id for q in a}
    assert [q.id for q in a] == [q.id for q in rare if q.id in picked]
    assert [q.id for q in stratified_slice(rare, 10, seed=6)] != [q.id for q in a]
    assert Counter(q.category for q in a) == {"Symptoms": 4, "Causes": 3, "Affects": 3}


def test_uncategorised_questions_form_their_own_stratum(medqa):
    rare = _rare_set(medqa, {"Treatment": 6, "Causes": 6})
    rare += [dataclasses.replace(q, id=f"nocat-{q.id}") for q in medqa[100:106]]
    assert Counter(q.category for q in stratified_slice(rare, 6, seed=0)) == {"Causes": 2, "Treatment": 2, None: 2}


def test_load_declared_stratifies_rare_sets_only(tmp_path, medqa):
    rare = _rare_set(medqa[:300], {"Diagnosis": 280, "Affects": 3, "Symptoms": 3, "Causes": 3})
    write_jsonl(tmp_path / "raredis_sub.jsonl", rare)
    write_jsonl(tmp_path / "plain.jsonl", rare)  # same rows under a name that is not a rare set: plain seeded slice
    got = load_declared({"raredis_sub": str(tmp_path / "raredis_sub.jsonl"), "plain": str(tmp_path / "plain.jsonl")}, 8, seed=0)
    assert Counter(q.category for q in got["raredis_sub"]) == {"Diagnosis": 2, "Affects": 2, "Symptoms": 2, "Causes": 2}
    assert [q.id for q in got["plain"]] == [q.id for q in seeded_slice(rare, 8, seed=0)]


def test_max_raredis_sizes_the_rare_slice_apart_from_the_others(tmp_path, medqa):
    rare = _rare_set(medqa[:70], dict.fromkeys(CATEGORIES, 10))
    write_jsonl(tmp_path / "raredis_sub.jsonl", rare)
    write_jsonl(tmp_path / "medqa.jsonl", medqa[:50])
    got = load_declared({"medqa": str(tmp_path / "medqa.jsonl"), "raredis_sub": str(tmp_path / "raredis_sub.jsonl")},
                        4, seed=0, max_raredis=21)
    assert len(got["medqa"]) == 4
    assert Counter(q.category for q in got["raredis_sub"]) == dict.fromkeys(CATEGORIES, 3)


def test_load_evaluated_reads_the_prepared_files_of_every_declared_benchmark(tmp_path, medqa):
    out = tmp_path / "prepared"
    (out / "benchmarks").mkdir(parents=True)
    write_jsonl(out / "benchmarks" / "medqa.jsonl", medqa[:20])
    write_jsonl(out / "raredis_sub.jsonl", _rare_set(medqa[20:90], dict.fromkeys(CATEGORIES, 10)))
    p = load_params(ROOT / "params.yaml", overrides={"eval.max_per_benchmark": 5, "eval.max_raredis": 14})
    p.data.benchmarks = {"medqa": p.data.benchmarks["medqa"]}
    got = load_evaluated(p, out)
    assert list(got) == ["medqa", "raredis_sub"] and len(got["medqa"]) == 5
    assert Counter(q.category for q in got["raredis_sub"]) == dict.fromkeys(CATEGORIES, 2)
