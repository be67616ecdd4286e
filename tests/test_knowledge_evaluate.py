"""Corpus coverage of E_rare by name match, and recall@k of entity-name queries (medssr.knowledge.evaluate)."""

from __future__ import annotations

import json

import pytest

from medssr.data.rare import build_tagger
from medssr.knowledge.corpus import CorpusError, Passage
from medssr.knowledge.evaluate import Entity, coverage, load_entities, recall_at_k
from medssr.knowledge.index import build_index, open_index
from medssr.records import RecordError


def _passage(pid: str, title: str, aliases: tuple[str, ...] = ()) -> Passage:
    return Passage(f"{pid}#0", title, f"{title}: a rare disease.", "s", "l", aliases=aliases)


def test_coverage_matches_normalised_titles_and_synonyms():
    ps = [Passage("p1#0", "Behçet's Syndrome", "t1", "s", "l"), Passage("p2#0", "Other", "t2", "s", "l", aliases=("Adamantiades disease",)),
          Passage("p3#0", "ALS", "t3", "s", "l")]
    ents = [Entity(id="a", name="Behcet syndrome"), Entity(id="b", name="Adamantiades-Behçet", synonyms=["Adamantiades disease"]),
            Entity(id="c", name="Nothing", synonyms=["ALS"])]
    assert coverage(ents, ps) == {"Behcet syndrome": ["p1#0"], "Adamantiades-Behçet": ["p2#0"]}  # 'ALS' is too short to trust


def test_coverage_tells_greek_letters_apart():
    ents = [Entity(id="ORPHA:846", name="Alpha-thalassemia"), Entity(id="ORPHA:848", name="Beta-thalassemia"),
            Entity(id="ORPHA:231214", name="Thalassemia")]
    covered = coverage(ents, [_passage("a", "α-thalassemia"), _passage("b", "β-Thalassemia"), _passage("t", "Thalassemias")])
    assert covered == {"Alpha-thalassemia": ["a#0"], "Beta-thalassemia": ["b#0"]}


@pytest.mark.parametrize("spelling", ["α-thalassemia", "ALPHA-THALASSEMIA", "Ａｌｐｈａ-thalassemia", "alpha thalassemia's", "Álpha-thalassémia"])
def test_tagging_and_coverage_agree_on_a_spelling(spelling):
    """The tagger finds the entity in a question that spells it so exactly when coverage finds a passage titled so."""
    e = Entity(id="ORPHA:846", name="Alpha-thalassemia")
    tagged = [m.entity.id for m in build_tagger([e], stoplist=[]).find(f"A child with {spelling}, anemia.")]
    assert tagged == ["ORPHA:846"]
    assert coverage([e], [_passage("p", spelling)]) == {"Alpha-thalassemia": ["p#0"]}


def test_tagging_and_coverage_both_fold_accents():
    """One rule: the question that writes "Behcet" is tagged with Orphanet's "Behçet disease", which NORD covers."""
    e = Entity(id="ORPHA:117", name="Behçet disease")
    assert [m.entity.id for m in build_tagger([e], stoplist=[]).find("A man with Behcet disease.")] == ["ORPHA:117"]
    assert coverage([e], [_passage("nord", "Behcet's Disease")]) == {"Behçet disease": ["nord#0"]}


def test_load_entities_reads_the_prepare_stage_file_and_names_a_bad_row(tmp_path):
    path = tmp_path / "entities.jsonl"
    with pytest.raises(CorpusError, match=r"entities\.jsonl: entity file not found; run the prepare stage"):
        load_entities(path)
    path.write_text(json.dumps({"id": "ORPHA:3471", "name": "Winchester syndrome", "synonyms": [], "orphacode": "3471"}) + "\n"
                    + json.dumps({"name": "Torg syndrome", "synonyms": [3]}) + "\n", encoding="utf-8")
    with pytest.raises(RecordError, match=r"entities\.jsonl:2: synonyms: expected a list of strings"):
        load_entities(path)
    path.write_text(path.read_text().splitlines()[0] + "\n", encoding="utf-8")
    assert load_entities(path) == [Entity(id="ORPHA:3471", name="Winchester syndrome", orphacode="3471")]


def test_recall_at_k_counts_covered_entities_whose_name_retrieves_their_passage(tmp_path):
    ps = [_passage("w", "Winchester syndrome"), _passage("t", "Torg syndrome"), _passage("x", "Unrelated topic")]
    ents = [Entity(id="1", name="Winchester syndrome"), Entity(id="2", name="Torg syndrome"), Entity(id="3", name="Not in the corpus")]
    covered = coverage(ents, ps)
    build_index(ps, tmp_path / "idx", "bm25", show_progress=False)
    r = recall_at_k(open_index(tmp_path / "idx", "bm25"), ents, covered, k=1)
    assert (r.embedder, r.k, r.n_queries, r.hits, r.recall, r.misses) == ("bm25", 1, 2, 2, 1.0, [])
