"""The one rare-disease entity and name normalisation shared by tagging, corpus coverage and synthesis."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from medssr.data.entities import Entity, normalize_name, read_entities
from medssr.records import RecordError

RAW = Path(__file__).resolve().parents[1] / "data" / "raw"


def test_normalize_name_folds_case_punctuation_and_possessives():
    assert normalize_name("Crigler–Najjar's Syndrome") == "crigler najjar syndrome"
    assert normalize_name("β-thalassemia") == "beta thalassemia"


@pytest.mark.parametrize("fold", [False, True])
def test_greek_letters_full_width_and_case_name_one_disease(fold):
    assert normalize_name("α-thalassemia", fold) == normalize_name("Alpha-Thalassemia", fold) == "alpha thalassemia"
    assert normalize_name("α-thalassemia", fold) != normalize_name("β-thalassemia", fold)
    assert normalize_name("ＭＥＬＡＳ　Syndrome", fold) == normalize_name("MELAS syndrome", fold) == "melas syndrome"
    assert normalize_name("Down’s syndrome", fold) == normalize_name("DOWN SYNDROME", fold) == "down syndrome"


def test_accents_are_folded_only_when_asked():
    assert normalize_name("Sjögren syndrome") == "sjögren syndrome"  # the tagger's key: accents kept
    assert normalize_name("Sjögren syndrome", fold_accents=True) == normalize_name("SJOGREN'S SYNDROME", fold_accents=True) == "sjogren syndrome"
    assert normalize_name("Behçet's-Syndrome", fold_accents=True) == "behcet syndrome"
    assert normalize_name("Ménétrier disease", fold_accents=True) == "menetrier disease"


def test_folding_accents_never_separates_names_the_tagger_joins():
    """Coverage's key is a function of the tagger's: two spellings the tagger equates, coverage equates too."""
    with gzip.open(RAW / "rare_disease" / "orphanet_diseases.jsonl.gz", "rt", encoding="utf-8") as fh:
        names = [n for row in map(json.loads, fh) for n in [row["name"], *(row.get("synonyms") or [])]]
    assert len(names) > 10_000
    for n in names:
        assert normalize_name(normalize_name(n), fold_accents=True) == normalize_name(n, fold_accents=True), n


def test_entities_round_trip_through_their_jsonl_rows(tmp_path):
    e = Entity(id="ORPHA:117", name="Behçet disease", synonyms=["Adamantiades-Behçet disease"], orphacode="117", disorder_type="Disease",
               sources=["orphanet", "gard"])
    path = tmp_path / "entities.jsonl"
    path.write_text(json.dumps(e.to_dict(), ensure_ascii=False) + "\n\n" + json.dumps({"name": " Winchester syndrome ", "orphacode": 3471})
                    + "\n", encoding="utf-8")
    assert read_entities(path) == [e, Entity(id="ORPHA:3471", name="Winchester syndrome", orphacode="3471")]


@pytest.mark.parametrize(("row", "where"), [
    ({"name": "  "}, "name: expected a non-empty string"),
    ({"synonyms": ["x"]}, "name: expected a non-empty string"),
    ({"name": "Winchester syndrome", "synonyms": "Torg"}, "synonyms: expected a list of strings"),
    (["Winchester syndrome"], "<row>: expected a JSON object"),
])
def test_a_bad_entity_row_names_file_line_and_field(tmp_path, row, where):
    path = tmp_path / "entities.jsonl"
    path.write_text(json.dumps({"name": "Winchester syndrome"}) + "\n" + json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(RecordError, match=rf"entities\.jsonl:2: {where}"):
        read_entities(path)
