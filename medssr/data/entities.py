"""A rare disease of E_rare and the one rule that decides when two spellings of a name are the same.

Tagging (``medssr.data.rare``), the GARD-Orphanet merge of E_rare and corpus coverage (``medssr.knowledge.evaluate``)
all read names through ``normalize_name``, so a name the tagger finds in a question is the name coverage looks up in
the corpus; the rows of ``entities.jsonl`` (the prepare stage's E_rare) are read back by ``read_entities`` wherever
they are used. Accents are folded everywhere ("Behçet" == "Behcet"): NORD and GARD write "Behcet", "Guillain-Barre",
Orphanet and the benchmarks often keep the diacritics, and one disease must not become two entities or go untagged.
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from medssr.records import RecordError, iter_jsonl

_APOSTROPHE_S = re.compile(r"['’`´][sS]\b")
TOKEN = re.compile(r"[^\W_]+")
_GREEK = {"α": "alpha", "β": "beta", "γ": "gamma", "δ": "delta", "κ": "kappa", "λ": "lambda", "μ": "mu"}


def prepare_text(text: str) -> str:
    """The text names are read from: NFKC (full-width letters, ligatures), diacritics removed (Behçet -> Behcet),
    Greek letters spelled out (α -> alpha), possessive 's dropped (Down's, DOWN'S -> Down)."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
        text = unicodedata.normalize("NFC", "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c)))
        for g, name in _GREEK.items():
            text = text.replace(g, f" {name} ")
    return _APOSTROPHE_S.sub("", text) if "s" in text or "S" in text else text


def tokens(text: str, lower: bool = True) -> list[str]:
    """Word tokens of ``text`` (letters and digits), lower-cased unless asked not to."""
    toks = TOKEN.findall(prepare_text(text))
    return [t.lower() for t in toks] if lower else toks


def normalize_name(text: str) -> str:
    """The key two spellings of one name share ("Hirschsprung's disease" == "hirschsprung disease", "α-thalassemia"
    == "alpha thalassemia", "Sjögren" == "Sjogren", full-width == ASCII)."""
    return " ".join(tokens(text))


@dataclass
class Entity:
    """One rare disease: preferred name, synonyms, Orphanet code (None for GARD-only names)."""

    id: str
    name: str
    synonyms: list[str] = field(default_factory=list)
    orphacode: str | None = None
    disorder_type: str | None = None
    sources: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "synonyms": self.synonyms, "orphacode": self.orphacode,
                "disorder_type": self.disorder_type, "sources": self.sources}
    @classmethod
    def from_row(cls, row: Any, path: str | os.PathLike | None = None, line: int | None = None) -> Entity:
        """An entities.jsonl row (``name`` required; ``id``, ``synonyms``, ``orphacode`` ... optional) or RecordError."""
        if not isinstance(row, dict):
            raise RecordError(path, line, "<row>", f"expected a JSON object, got {type(row).__name__}")
        name = row.get("name")
        if not isinstance(name, str) or not name.strip():
            raise RecordError(path, line, "name", "expected a non-empty string")
        synonyms = row.get("synonyms")
        if synonyms is None:
            synonyms = []
        if not isinstance(synonyms, list) or not all(isinstance(s, str) for s in synonyms):
            raise RecordError(path, line, "synonyms", "expected a list of strings")
        code = row.get("orphacode")
        code = None if code is None else str(code)
        eid = row.get("id")
        if eid is None:
            eid = f"ORPHA:{code}" if code else name.strip()
        return cls(id=str(eid), name=name.strip(), synonyms=[s for s in synonyms if s.strip()], orphacode=code,
                   disorder_type=row.get("disorder_type"), sources=list(row.get("sources") or []))


def read_entities(path: str | os.PathLike) -> list[Entity]:
    """E_rare as the prepare stage wrote it (``data/prepared/entities.jsonl``); a bad row names its file and line."""
    return [Entity.from_row(row, path, line) for line, row in iter_jsonl(path)]
