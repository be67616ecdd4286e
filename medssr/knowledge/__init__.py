"""Rare-disease knowledge for question synthesis: corpus passages, embedders, a persistent index, retrieval.

``retrieve("Worster-Drought syndrome", index_dir, k=4)`` returns the top-k passages (paper §3.2: k = 4, dot-product
similarity) from the index the corpus stage built in ``index_dir`` (dvc.yaml: ``${corpus.index_dir}``).
"""

from __future__ import annotations

import os
import sys

from medssr.knowledge.corpus import SOURCES, CorpusError, CorpusStats, Passage, Source, load_passages, register_source
from medssr.knowledge.embedders import EMBEDDERS, MissingWeightsError, UnknownEmbedderError, load_embedder
from medssr.knowledge.evaluate import Entity, coverage, entities_from_orphanet, load_entities, normalize_name, recall_at_k
from medssr.knowledge.index import (
    IndexBuildError,
    IndexMismatchError,
    IndexNotFoundError,
    Manifest,
    Retriever,
    build_index,
    open_index,
    read_passages,
)
from medssr.knowledge.stage import run_corpus

KnowledgeErrors = (CorpusError, UnknownEmbedderError, MissingWeightsError, IndexNotFoundError, IndexMismatchError, IndexBuildError)


def retrieve(query: str, index_dir: str | os.PathLike, k: int = 4, embedder: str | None = None) -> list[Passage]:
    """The ``k`` passages most similar to ``query``, best first (the index and its encoder are loaded once per process)."""
    return open_index(index_dir, embedder).search([query], k)[0]


def retrieve_many(queries: list[str], index_dir: str | os.PathLike, k: int = 4, embedder: str | None = None) -> list[list[Passage]]:
    """``retrieve`` for a batch of queries (one encoder call)."""
    return open_index(index_dir, embedder).search(queries, k)


def main_retrieve(query: str, index_dir: str | os.PathLike, k: int = 4, embedder: str | None = None) -> int:
    """CLI body of ``medssr retrieve QUERY -k 4``: print each passage with source, score and provenance; exit status."""
    try:
        passages = retrieve(query, index_dir, k, embedder)
    except KnowledgeErrors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not passages:
        print(f"no passage matches {query!r}")
        return 1
    for rank, p in enumerate(passages, 1):
        where = f" {p.url}" if p.url else ""
        print(f"[{rank}] {p.score:.4f}  {p.title}  ({p.source}, {p.id}; {p.license}){where}")
        text = p.text if len(p.text) <= 600 else p.text[:600].rsplit(" ", 1)[0] + " ..."
        print(f"    {text}\n")
    return 0


__all__ = [
    "EMBEDDERS", "SOURCES", "CorpusError", "CorpusStats", "Entity", "IndexBuildError", "IndexMismatchError", "IndexNotFoundError",
    "Manifest", "MissingWeightsError", "Passage", "Retriever", "Source", "UnknownEmbedderError", "build_index", "coverage",
    "entities_from_orphanet", "load_embedder", "load_entities", "load_passages", "main_retrieve", "normalize_name", "open_index",
    "read_passages", "recall_at_k", "register_source", "retrieve", "retrieve_many", "run_corpus",
]
