"""A rare disease of E_rare and the one rule that decides when two spellings of a name are the same.

Tagging (``medssr.data.rare``), corpus coverage (``medssr.knowledge.evaluate``) and synthesis all read names
through ``normalize_name``, so a name the tagger finds in a question is the name coverage looks up in the corpus.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

_APOSTROPHE_S = re.compile(r"['’`´]s\b")
TOKEN = re.compile(r"[^\W_]+")
_GREEK = {"α": "alpha", "β": "beta", "γ": "gamma", "δ": "delta", "κ": "kappa", "λ": "lambda", "μ": "mu"}


def prepare_text(text: str) -> str:
    """NFKC, Greek letters spelled out, possessive 's dropped (Down's -> Down): the text tokens are cut from."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
        for g, name in _GREEK.items():
            text = text.replace(g, f" {name} ")
    return _APOSTROPHE_S.sub("", text) if "s" in text else text


def tokens(text: str, lower: bool = True) -> list[str]:
    """Word tokens of ``text`` (letters and digits), lower-cased unless asked not to."""
    toks = TOKEN.findall(prepare_text(text))
    return [t.lower() for t in toks] if lower else toks


def normalize_name(text: str) -> str:
    """The key two spellings of one name share ("Hirschsprung's disease" == "hirschsprung disease")."""
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
