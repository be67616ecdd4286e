"""Corpus coverage of E_rare by name match, and recall@k of entity-name queries (medssr.knowledge.evaluate)."""

from __future__ import annotations

from medssr.knowledge.corpus import Passage
from medssr.knowledge.evaluate import Entity, coverage


def test_coverage_matches_normalised_titles_and_synonyms():
    ps = [Passage("p1#0", "Behçet's Syndrome", "t1", "s", "l"), Passage("p2#0", "Other", "t2", "s", "l", aliases=("Adamantiades disease",)),
          Passage("p3#0", "ALS", "t3", "s", "l")]
    ents = [Entity("Behcet syndrome"), Entity("Adamantiades-Behçet", synonyms=("Adamantiades disease",)), Entity("Nothing", ("ALS",))]
    assert coverage(ents, ps) == {"Behcet syndrome": ["p1#0"], "Adamantiades-Behçet": ["p2#0"]}  # 'ALS' is too short to trust
