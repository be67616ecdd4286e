"""Which rare diseases the corpus covers, and how often retrieval finds them (recall@k by name match).

A passage is *about* an entity when its title (MedQuAD focus, NORD file title, Orphanet name) or one of its
aliases equals the entity's name or one of its synonyms under the tagger's ``normalize_name`` (one rule for both:
``medssr.data.entities``). Coverage feeds the synthesizer (prefer covered diseases);
recall@k measures each embedder on entity-name queries.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medssr.data.entities import Entity, normalize_name, read_entities
from medssr.knowledge.corpus import CorpusError, Passage, _iter_jsonl

__all__ = ["Entity", "RecallResult", "coverage", "entities_from_orphanet", "load_entities", "normalize_name", "recall_at_k"]

MIN_ALIAS_LEN = 5  # shorter synonyms ("ALS", "MCCD") are too ambiguous to decide what a passage is about
EXCLUDED_TYPES = ("Category", "Clinical group")  # Orphanet grouping nodes, not diseases


@dataclass
class RecallResult:
    embedder: str
    k: int
    n_queries: int
    hits: int
    seconds: float
    sample: int | None = None
    misses: list[str] = field(default_factory=list)  # a few missed entity names, for reading

    @property
    def recall(self) -> float:
        return self.hits / self.n_queries if self.n_queries else 0.0


def load_entities(path: str | Path) -> list[Entity]:
    """E_rare from the prepare stage (``entities.jsonl``), read by ``medssr.data.entities.read_entities``."""
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"{path}: entity file not found; run the prepare stage first (dvc repro prepare) or pass --entities")
    return read_entities(path)


def entities_from_orphanet(path: str | Path = "data/raw/rare_disease/orphanet_diseases.jsonl.gz") -> list[Entity]:
    """E_rare straight from Orphanet: every disorder that is not a grouping node (Category, Clinical group)."""
    path = Path(path)
    out = []
    for line, obj in _iter_jsonl(path):
        if obj.get("disorder_type") in EXCLUDED_TYPES or not obj.get("name"):
            continue
        out.append(Entity.from_row(obj, path, line))
    return out


def _keys(name: str, aliases: Iterable[str]) -> set[str]:
    """The keys a name and its aliases match by; aliases shorter than MIN_ALIAS_LEN are too ambiguous to count."""
    return ({normalize_name(name)} | {k for k in map(normalize_name, aliases) if len(k) >= MIN_ALIAS_LEN}) - {""}


def coverage(entities: Iterable[Entity], passages: Sequence[Passage]) -> dict[str, list[str]]:
    """``{entity name: [passage ids about it]}`` for every entity with at least one such passage (ids in corpus order)."""
    by_name: dict[str, list[int]] = {}
    for i, p in enumerate(passages):
        for key in _keys(p.title, p.aliases):
            by_name.setdefault(key, []).append(i)
    found: dict[str, set[int]] = {}
    for e in entities:
        hits = {i for key in _keys(e.name, e.synonyms) for i in by_name.get(key, ())}
        if hits:
            found.setdefault(e.name, set()).update(hits)  # two entities of one name (rare) share their passages
    return {name: [passages[i].id for i in sorted(idx)] for name, idx in found.items()}


def recall_at_k(retriever, entities: Sequence[Entity], covered: dict[str, list[str]], k: int = 4, sample: int | None = None,
                seed: int = 0, batch: int = 256) -> RecallResult:
    """Fraction of covered entities whose name, used as the query, brings a passage about them into the top ``k``."""
    names = sorted({e.name for e in entities if e.name in covered})
    if sample is not None and sample < len(names):
        names = sorted(random.Random(seed).sample(names, sample))
    t0 = time.perf_counter()
    hits, misses = 0, []
    for s in range(0, len(names), batch):
        part = names[s : s + batch]
        for name, found in zip(part, retriever.search(part, k), strict=True):
            if set(covered[name]) & {p.id for p in found}:
                hits += 1
            elif len(misses) < 25:
                misses.append(name)
    return RecallResult(retriever.embedder, k, len(names), hits, round(time.perf_counter() - t0, 2), sample, misses)
