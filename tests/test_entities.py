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


def test_greek_letters_full_width_and_case_name_one_disease():
    assert normalize_name("α-thalassemia") == normalize_name("Alpha-Thalassemia") == "alpha thalassemia"
    assert normalize_name("α-thalassemia") != normalize_name("β-thalassemia")
    assert normalize_name("ＭＥＬＡＳ　Syndrome") == normalize_name("MELAS syndrome") == "melas syndrome"
    assert normalize_name("Down’s syndrome") == normalize_name("DOWN SYNDROME") == "down syndrome"


def test_accents_are_folded_by_the_one_rule():
    assert normalize_name("Sjögren syndrome") == normalize_name("SJOGREN'S SYNDROME") == "sjogren syndrome"
    assert normalize_name("Behçet's-Syndrome") == "behcet syndrome"
    assert normalize_name("Ménétrier disease") == "menetrier disease"
    assert normalize_name("Sjo\u0308gren syndrome") == "sjogren syndrome"  # decomposed input (combining diaeresis)


def test_the_tagger_finds_an_accented_name_written_without_its_accents_and_back():
    """Tagging and coverage share one key: "Behcet" in a question is Orphanet's "Behçet disease", and the reverse."""
    from medssr.data.rare import build_tagger

    tagger = build_tagger([Entity(id="ORPHA:117", name="Behçet disease"), Entity(id="GARD:1", name="Guillain-Barre syndrome")])
    assert tagger.tag("A 30-year-old with oral ulcers; Behcet disease is suspected.") == "Behçet disease"
    assert tagger.tag("Weakness after a diarrhoeal illness suggests Guillain-Barré syndrome.") == "Guillain-Barre syndrome"


def test_prepare_merges_a_gard_name_into_its_accented_orphanet_entry(tmp_path):
    """One disease, one entity: GARD's "Behcet disease" joins Orphanet's "Behçet disease" instead of becoming a second."""
    from medssr.data.rare import GARD_FILE, ORPHANET_FILE, load_entities

    for name, rows in ((ORPHANET_FILE, [{"orphacode": 117, "name": "Behçet disease", "disorder_type": "Disease"}]),
                       (GARD_FILE, [{"source": "GARD", "focus": "Behcet disease", "url": "https://rarediseases.info.nih.gov/gard/5908"}])):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(tmp_path / name, "wt", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    (entity,) = load_entities(tmp_path)
    assert (entity.id, entity.sources) == ("ORPHA:117", ["orphanet", "gard"])


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
