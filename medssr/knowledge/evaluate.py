"""Which rare diseases the corpus covers, and how often retrieval finds them (recall@k by name match).

A passage is *about* an entity when its title (MedQuAD focus, NORD file title, Orphanet name) or one
of its aliases equals, after normalisation, the entity's name or one of its synonyms. Coverage feeds
the synthesizer (prefer covered diseases); recall@k measures each embedder on entity-name queries.
"""

from __future__ import annotations

import random
import re
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medssr.knowledge.corpus import CorpusError, Passage, _iter_jsonl

MIN_ALIAS_LEN = 5  # shorter synonyms ("ALS", "MCCD") are too ambiguous to decide what a passage is about
EXCLUDED_TYPES = ("Category", "Clinical group")  # Orphanet grouping nodes, not diseases


@dataclass(frozen=True)
class Entity:
    """A rare disease of E_rare."""

    name: str
    synonyms: tuple[str, ...] = ()
    orphacode: str | None = None


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


def normalize_name(name: str) -> str:
    """Case, accents, possessives and punctuation folded: ``Behçet's-Syndrome`` -> ``behcet syndrome``."""
    s = unicodedata.normalize("NFKD", name)
    s = "".join(c for c in s if not unicodedata.combining(c)).casefold()
    s = re.sub(r"['\u2019`]s\b", "", s)
    return re.sub(r"[^0-9a-z]+", " ", s).strip()


def _synonyms(value, path: Path, line: int) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CorpusError(f"{path}:{line}: synonyms: expected a list of strings")
    return tuple(v for v in value if v.strip())


def load_entities(path: str | Path) -> list[Entity]:
    """E_rare from the prepare stage: JSONL rows with at least ``name`` (plus ``synonyms``, ``orphacode``)."""
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"{path}: entity file not found; run the prepare stage first (dvc repro prepare) or pass --entities")
    out = []
    for line, obj in _iter_jsonl(path):
        name = obj.get("name")
        if not isinstance(name, str) or not name.strip():
            raise CorpusError(f"{path}:{line}: name: empty or missing")
        code = obj.get("orphacode")
        out.append(Entity(name.strip(), _synonyms(obj.get("synonyms"), path, line), str(code) if code is not None else None))
    return out


def entities_from_orphanet(path: str | Path = "data/raw/rare_disease/orphanet_diseases.jsonl.gz") -> list[Entity]:
    """E_rare straight from Orphanet: every disorder that is not a grouping node (Category, Clinical group)."""
    path = Path(path)
    out = []
    for line, obj in _iter_jsonl(path):
        if obj.get("disorder_type") in EXCLUDED_TYPES or not obj.get("name"):
            continue
        out.append(Entity(obj["name"].strip(), _synonyms(obj.get("synonyms"), path, line), str(obj.get("orphacode"))))
    return out


def _entity_keys(e: Entity) -> set[str]:
    keys = {normalize_name(e.name)}
    keys.update(k for k in (normalize_name(s) for s in e.synonyms) if len(k) >= MIN_ALIAS_LEN)
    return keys - {""}


def coverage(entities: Iterable[Entity], passages: Sequence[Passage]) -> dict[str, list[str]]:
    """``{entity name: [passage ids about it]}`` for every entity with at least one such passage (ids in corpus order)."""
    by_name: dict[str, list[int]] = {}
    for i, p in enumerate(passages):
        keys = {normalize_name(p.title)} | {k for k in (normalize_name(a) for a in p.aliases) if len(k) >= MIN_ALIAS_LEN}
        for key in keys - {""}:
            by_name.setdefault(key, []).append(i)
    found: dict[str, set[int]] = {}
    for e in entities:
        hits = {i for key in _entity_keys(e) for i in by_name.get(key, ())}
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
