"""E_rare from Orphanet (+GARD) and the tagger, checked on real benchmark and Orphanet text."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from medssr.config import load_params
from medssr.data.loaders import load_benchmarks, load_training_source
from medssr.data.rare import Entity, build_tagger, is_acronym, load_entities, tag_question
from medssr.records import RecordError

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "data" / "raw"


@pytest.fixture(scope="module")
def entities():
    return load_entities(RAW)


@pytest.fixture(scope="module")
def tagger(entities):
    return build_tagger(entities, min_len=5)


@pytest.fixture(scope="module")
def bench():
    return {q.id: q for rows in load_benchmarks(load_params(ROOT / "params.yaml").data.benchmarks, RAW).values() for q in rows}


def names(tagger, text):
    return [m.entity.name for m in tagger.find(text)]


def test_grouping_nodes_are_not_entities(entities):
    types = {e.disorder_type for e in entities if e.orphacode}
    assert "Category" not in types
    assert {"Disease", "Malformation syndrome", "Clinical subtype"} <= types
    assert len([e for e in entities if e.orphacode]) > 7000


def test_gard_names_orphanet_lacks_are_added_once(entities):
    gard_only = [e for e in entities if e.sources == ["gard"]]
    assert any(e.name == "Creutzfeldt-Jakob disease" for e in gard_only)
    assert len({e.id for e in entities}) == len(entities)


def test_worster_drought_syndrome_is_tagged_in_the_papers_case_study(tagger):
    # Table 15 of the paper: "Rare Disease Worster-Drought syndrome/Suprabulbar paresis, congenital"
    assert names(tagger, "Rare Disease Worster-Drought syndrome/Suprabulbar paresis, congenital") == ["Worster-Drought syndrome"]


def test_synonyms_map_to_the_preferred_name(tagger):
    assert names(tagger, "A child with congenital suprabulbar paresis and drooling") == ["Worster-Drought syndrome"]


def test_possessive_spelling_matches(tagger):
    assert names(tagger, "Hirschsprung's disease") == ["Hirschsprung disease"]


def test_acronyms_match_case_sensitively(tagger):
    assert names(tagger, "Patients with MCCD") == ["3-methylcrotonyl-CoA carboxylase deficiency"]
    assert names(tagger, "patients with mccd") == []


def test_mixed_case_acronym_does_not_match_an_everyday_verb(tagger):
    q = next(q for q in load_training_source("headqa", RAW) if q.id == "headqa-Cuaderno_2015_1_P-224")
    assert "selects the most appropriate strategy" in q.question
    assert tagger.find(q.render()) == []


def test_real_rare_disease_question_is_tagged(tagger, bench):
    tag = tag_question(bench["mmlu-college_medicine-074"], tagger)  # "Myoclonic epilepsy and ragged-red fiber (MERRF)..."
    assert tag.name == "MERRF" and tag.where == "stem"


def test_common_disease_is_not_tagged(tagger, bench):
    q = bench["medqa-000913"]
    assert "asthma" in q.render().lower()
    assert names(tagger, q.render()) == ["Cystic fibrosis"]  # asthma (stoplisted) is not among the matches
    assert names(tagger, "Her asthma is well controlled with an albuterol inhaler.") == []


def test_hyphenated_longer_name_is_not_split(tagger, bench):
    assert "non-Hodgkin lymphoma" in bench["medqa-000142"].question
    assert tagger.find(bench["medqa-000142"].render()) == []
    assert names(tagger, "Has been known to cause Steven-Johnson's syndrome") == []


def test_match_does_not_run_across_a_sentence_end(tagger, bench):
    q = bench["mmlu-professional_medicine-070"]
    assert "The trachea is at the midline. Heart sounds are not audible." in q.question
    assert tagger.find(q.render()) == []


def test_vaccine_mentions_are_not_the_disease(tagger, bench):
    q = bench["medqa-001048"]
    assert "tetanus vaccination" in q.question
    assert tagger.find(q.render()) == []


def test_anatomical_synonym_is_not_a_disease(tagger):
    assert names(tagger, "Incus and malleus are derived from:") == []  # "Malleus" is a synonym of glanders


def test_scope_decides_whether_options_count(tagger, bench):
    q = bench["medqa-001272"]  # only option B names a rare disease
    assert tag_question(q, tagger, "stem").name is None
    tag = tag_question(q, tagger, "all")
    assert tag.name == "Lymphangioleiomyomatosis" and tag.where == "options"


def test_short_names_are_dropped_unless_long_acronyms():
    e = Entity(id="X:1", name="Long enough disease", synonyms=["CP", "Down", "ABCD", "abcd"])
    t = build_tagger([e], min_len=5, stoplist=[])
    assert t.dropped == {"short_acronym": 1, "short": 2}  # CP; Down, abcd
    assert [m.entity.id for m in t.find("ABCD and Long enough disease")] == ["X:1", "X:1"]
    assert t.find("CP or Down or abcd") == []


def test_is_acronym():
    assert is_acronym("MCCD") and is_acronym("HAIR-AN") and is_acronym("SeLECTS")
    assert not is_acronym("Down syndrome") and not is_acronym("IgA nephropathy")


def test_a_bad_line_in_a_raw_entity_file_names_file_and_line(tmp_path):
    (tmp_path / "rare_disease").mkdir()
    good = '{"orphacode": "117", "name": "Behçet disease", "disorder_type": "Disease"}\n'
    with gzip.open(tmp_path / "rare_disease" / "orphanet_diseases.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.write(good + '{"orphacode": \n')
    with pytest.raises(RecordError, match=r"orphanet_diseases\.jsonl\.gz:2: <row>: invalid JSON"):
        load_entities(tmp_path, include_gard=False)
    with gzip.open(tmp_path / "rare_disease" / "orphanet_diseases.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.write(good)
    assert [e.name for e in load_entities(tmp_path, include_gard=False)] == ["Behçet disease"]
    with pytest.raises(FileNotFoundError, match=r"medquad_gard_ghr\.jsonl\.gz: no such file \(check data\.raw_dir"):
        load_entities(tmp_path)
