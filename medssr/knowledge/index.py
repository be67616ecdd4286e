"""The persistent passage index: chromadb collections of our own vectors, a bm25s index beside them, a manifest.

Layout of ``index_dir``::

    manifest.json     embedders served, model ids, dims, passage count, corpus hash (written last)
    passages.jsonl    every passage in index order: the one place passage text and provenance live
    chroma/           chromadb PersistentClient, one collection per dense embedder (``passages-minilm``, ...)
    bm25/             bm25s index (lexical; not a vector store)

A build goes to a hidden sibling folder and is renamed into place only when complete, so an
interrupted or failed build never leaves something that opens as a valid index.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medssr.config import set_offline_env
from medssr.errors import MedssrError
from medssr.files import atomic_dir
from medssr.knowledge.corpus import CorpusError, Passage, corpus_hash, passage_input
from medssr.knowledge.embedders import DENSE, Embedder, check_embedder_name, load_embedder
from medssr.records import iter_jsonl, write_jsonl

INDEX_FORMAT = 1
MANIFEST, PASSAGES, CHROMA, BM25 = "manifest.json", "passages.jsonl", "chroma", "bm25"
RRF_K = 60  # reciprocal rank fusion constant (Cormack et al. 2009)
HYBRID_DEPTH = 50  # candidates taken from each ranker before fusing
# Up to this many passages a dense query is answered exactly from the stored vectors, not from chromadb's HNSW graph:
# two builds of the same corpus give different graphs (chromadb's insertion order is not fixed, whatever its thread
# count), and they answered 12 of 3,000 real entity queries differently, which changed synthesis prompts and every
# number downstream. Exact top-k is reproducible and, at this size, fast (7,862 x 384 floats: ~1 ms a query).
EXACT_SEARCH_MAX = 50_000


class IndexNotFoundError(MedssrError, FileNotFoundError):
    """No complete index where one was asked for."""


class IndexMismatchError(MedssrError, ValueError):
    """The index on disk was built for another embedder, model or dimension than the one requested."""


class IndexBuildError(MedssrError, RuntimeError):
    """The index could not be built or put in place."""


@dataclass
class Manifest:
    """What an index holds; written last, so its presence marks a complete index."""

    embedder: str  # the default for retrieve()
    embedders: list[str]  # every embedder name this index can answer for
    dense: dict[str, dict[str, Any]]  # name -> {model_id, fingerprint, dim, collection}
    bm25: dict[str, Any] | None
    passages: int
    corpus_hash: str
    sources: dict[str, int] = field(default_factory=dict)
    build_seconds: float = 0.0
    passages_per_s: float = 0.0
    created: str = ""
    format: int = INDEX_FORMAT

    @classmethod
    def read(cls, index_dir: Path) -> Manifest:
        path = index_dir / MANIFEST
        if not path.exists():
            hint = " (an interrupted build leaves no manifest)" if index_dir.exists() else ""
            raise IndexNotFoundError(f"{index_dir}: no complete passage index{hint}; build it with `python stages/corpus.py` "
                                     "(or `dvc repro corpus`), or point corpus.index_dir at one")
        d = json.loads(path.read_text(encoding="utf-8"))
        if d.get("format") != INDEX_FORMAT:
            raise IndexMismatchError(f"{path}: index format {d.get('format')} is not {INDEX_FORMAT}; rebuild it with `python stages/corpus.py`")
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def servable(dense: Sequence[str], bm25: bool) -> list[str]:
    """Embedder names an index with these components answers for (hybrid = minilm + bm25)."""
    out = [n for n in DENSE if n in dense]
    if bm25:
        out.append("bm25")
    if "minilm" in dense and bm25:
        out.append("hybrid")
    return out


def components(embedders: Sequence[str]) -> tuple[list[str], bool]:
    """The dense collections and whether a BM25 index are needed to serve ``embedders``."""
    dense, bm25 = [], False
    for name in embedders:
        check_embedder_name(name)
        if name in ("minilm", "hybrid") and "minilm" not in dense:
            dense.append("minilm")
        if name == "medcpt" and "medcpt" not in dense:
            dense.append("medcpt")
        if name in ("bm25", "hybrid"):
            bm25 = True
    return dense, bm25


def query_copy(index_dir: Path, manifest: Manifest) -> Path:
    """The chroma store a query opens: a copy under ``.cache/chroma``, made once per built index.

    chromadb writes to ``chroma.sqlite3`` whenever a client opens it, and the index is a DVC out: opened in place,
    any query (synthesize's retrieval, ``medssr retrieve``) made ``dvc status`` report the corpus changed and the
    next ``dvc repro`` rebuild it and everything after it. Copies of earlier builds of the same index are removed.
    """
    from medssr.tracking import project_root

    home = project_root() / ".cache" / "chroma"
    where = hashlib.sha256(str(index_dir.resolve()).encode()).hexdigest()[:12]
    build = hashlib.sha256(f"{manifest.created}|{manifest.corpus_hash}|{manifest.passages}".encode()).hexdigest()[:12]
    dst = home / f"{where}-{build}"
    if not (dst / "chroma.sqlite3").exists():
        with atomic_dir(dst, keep_existing=lambda p: (p / "chroma.sqlite3").exists()) as tmp:
            shutil.copytree(index_dir / CHROMA, tmp, dirs_exist_ok=True)
        for old in home.glob(f"{where}-*"):
            if old != dst and not old.name.startswith("."):
                shutil.rmtree(old, ignore_errors=True)
    return dst


def _chroma_client(path: Path):
    set_offline_env()
    import chromadb
    from chromadb.config import Settings

    return chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False, allow_reset=False))


def _check_passages(passages: Sequence[Passage]) -> None:
    if not passages:
        raise CorpusError("no passages to index: the corpus sources gave nothing (check corpus.sources and corpus.extra_jsonl)")
    seen: set[str] = set()
    for i, p in enumerate(passages):
        if not p.text or not p.text.strip():
            raise CorpusError(f"passage {i} (id {p.id!r}, source {p.source}): empty text")
        if p.id in seen:
            raise CorpusError(f"passage {i}: duplicate id {p.id!r} (source {p.source})")
        seen.add(p.id)


def _is_replaceable(index_dir: Path) -> bool:
    """Only an index of ours (complete or not) or an empty folder may be replaced by a build."""
    if not index_dir.exists():
        return True
    names = {p.name for p in index_dir.iterdir()}
    return not names or MANIFEST in names or CHROMA in names or PASSAGES in names


def _add_dense(client, emb: Embedder, passages: Sequence[Passage], batch_size: int, show_progress: bool) -> dict[str, Any]:
    from tqdm import tqdm

    name = f"passages-{emb.name}"
    col = client.create_collection(name, embedding_function=None, metadata={"embedder": emb.name, "model_id": emb.model_id},
                                   configuration={"hnsw": {"space": "ip", "ef_construction": 200, "ef_search": 100, "max_neighbors": 16}})
    max_add = client.get_max_batch_size()
    group = min(max_add, batch_size * 8)  # embed this many, then add them in one call (and tick the progress bar)
    by_length = sorted(passages, key=lambda p: -len(p.text) - len(p.title))  # similar lengths share a batch: little padding
    with tqdm(total=len(passages), desc=f"embed+index {emb.name}", unit="passage", disable=not show_progress) as bar:
        for s in range(0, len(by_length), group):
            chunk = by_length[s : s + group]
            vecs = emb.embed_passages(chunk)
            if vecs.shape != (len(chunk), emb.dim):
                raise IndexBuildError(f"embedder {emb.name} returned shape {vecs.shape}, expected ({len(chunk)}, {emb.dim})")
            for a in range(0, len(chunk), max_add):
                part = chunk[a : a + max_add]
                col.add(ids=[p.id for p in part], embeddings=vecs[a : a + max_add],
                        metadatas=[{"source": p.source, "title": p.title[:500], "rare": p.rare} for p in part])
            bar.update(len(chunk))
    return {"model_id": emb.model_id, "fingerprint": emb.fingerprint, "dim": emb.dim, "collection": name,
            "dtype": str(getattr(emb, "dtype", "")).removeprefix("torch."), **getattr(emb, "dirs", {})}


def _bm25_tokens(texts: Sequence[str], show_progress: bool = False):
    import bm25s

    return bm25s.tokenize(list(texts), stopwords="en", return_ids=False, show_progress=show_progress)


def _build_bm25(passages: Sequence[Passage], out: Path, show_progress: bool) -> dict[str, Any]:
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(_bm25_tokens([passage_input(p) for p in passages], show_progress), show_progress=show_progress)
    retriever.save(str(out), show_progress=False)
    return {"library": f"bm25s {bm25s.__version__}", "tokenizer": "bm25s.tokenize(stopwords='en')", "k1": retriever.k1,
            "b": retriever.b, "method": retriever.method}


def build_index(passages: Sequence[Passage], index_dir: str | os.PathLike, embedder: str = "minilm", *, also: Sequence[str] = (),
                batch_size: int = 32, medcpt_query_dir: str | None = None, medcpt_article_dir: str | None = None,
                models: Mapping[str, Embedder] | None = None, sources: Mapping[str, int] | None = None,
                show_progress: bool = True) -> Manifest:
    """Embed and index ``passages`` for ``embedder`` (plus the ``also`` embedders, e.g. for evaluation); replace ``index_dir``.

    ``models`` passes already-loaded dense encoders by name (otherwise they are loaded from params' settings).
    """
    index_dir = Path(index_dir)
    check_embedder_name(embedder)
    dense_names, need_bm25 = components([embedder, *also])
    _check_passages(passages)
    if not _is_replaceable(index_dir):
        raise IndexBuildError(f"{index_dir}: exists and is not a passage index (no {MANIFEST}); refusing to replace it. "
                              "Move it away or set corpus.index_dir to another folder")
    encoders = {n: (models or {}).get(n) or load_embedder(n, medcpt_query_dir, medcpt_article_dir, batch_size) for n in dense_names}
    t0 = time.perf_counter()
    client = None
    with atomic_dir(index_dir) as tmp:
        try:
            write_jsonl(tmp / PASSAGES, (p.to_dict() for p in passages))
            dense_meta = {}
            if dense_names:
                client = _chroma_client(tmp / CHROMA)
                for n in dense_names:
                    dense_meta[n] = _add_dense(client, encoders[n], passages, batch_size, show_progress)
            bm25_meta = _build_bm25(passages, tmp / BM25, show_progress) if need_bm25 else None
            seconds = time.perf_counter() - t0
            manifest = Manifest(embedder=embedder, embedders=servable(dense_names, need_bm25), dense=dense_meta, bm25=bm25_meta,
                                passages=len(passages), corpus_hash=corpus_hash(passages), sources=dict(sources or {}),
                                build_seconds=round(seconds, 2), passages_per_s=round(len(passages) / max(seconds, 1e-9), 2),
                                created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        finally:
            if client is not None:  # closed before the swap (and before a failed build's folder is removed)
                client.close()
        (tmp / MANIFEST).write_text(json.dumps(dataclasses.asdict(manifest), indent=2) + "\n", encoding="utf-8")
        _forget(index_dir)
    return manifest


# ---------------------------------------------------------------- querying


@dataclass
class Retriever:
    """An opened index, ready to answer queries for one embedder."""

    index_dir: Path
    manifest: Manifest
    embedder: str
    passages: list[Passage]
    position: dict[str, int]
    encoder: Embedder | None = None
    collection: Any = None
    client: Any = None
    bm25: Any = None
    vectors: np.ndarray | None = None  # every stored vector in passage order, for exact search (small corpora)

    def search(self, queries: Sequence[str], k: int = 4) -> list[list[Passage]]:
        """Top-``k`` passages for each query, best first, with ``score`` set (dot product, BM25 score or RRF)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        queries = list(queries)
        if not queries:
            return []
        if self.embedder in DENSE:
            ranked = self._dense(queries, k)
        elif self.embedder == "bm25":
            ranked = self._lexical(queries, k)
        else:
            ranked = _rrf([self._dense(queries, max(k, HYBRID_DEPTH)), self._lexical(queries, max(k, HYBRID_DEPTH))], k)
        return [[dataclasses.replace(self.passages[i], score=float(s)) for i, s in row] for row in ranked]

    def _dense(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        q = self.encoder.embed_queries(queries)
        if len(self.passages) <= EXACT_SEARCH_MAX:
            return self._exact(np.asarray(q, dtype=np.float32), k)
        res = self.collection.query(query_embeddings=q, n_results=min(k, len(self.passages)), include=["distances"])
        # chromadb's "ip" space reports distance = 1 - dot product
        return [[(self.position[i], 1.0 - d) for i, d in zip(ids, dists, strict=True)] for ids, dists in zip(res["ids"], res["distances"], strict=True)]

    def _exact(self, q: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        """Top-``k`` by dot product over all stored vectors; ties go to the earlier passage, so results never vary."""
        if self.vectors is None:
            self.vectors = collection_vectors(self)
        scores = q @ self.vectors.T
        order = np.argsort(-scores, axis=1, kind="stable")[:, : min(k, len(self.passages))]
        return [[(int(i), float(scores[r, i])) for i in row] for r, row in enumerate(order)]

    def _lexical(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        docs, scores = self.bm25.retrieve(_bm25_tokens(queries), k=min(k, len(self.passages)), show_progress=False)
        return [[(int(i), float(s)) for i, s in zip(drow, srow, strict=True) if s > 0] for drow, srow in zip(docs, scores, strict=True)]


def _rrf(rankings: list[list[list[tuple[int, float]]]], k: int) -> list[list[tuple[int, float]]]:
    """Reciprocal rank fusion: score = sum over rankers of 1 / (RRF_K + rank); earlier rankers win ties."""
    out = []
    for per_query in zip(*rankings, strict=True):
        fused: dict[int, float] = {}
        first_seen: dict[int, int] = {}
        for r, ranking in enumerate(per_query):
            for rank, (i, _) in enumerate(ranking, start=1):
                fused[i] = fused.get(i, 0.0) + 1.0 / (RRF_K + rank)
                first_seen.setdefault(i, r * 10_000 + rank)
        out.append(sorted(fused.items(), key=lambda kv: (-kv[1], first_seen[kv[0]]))[:k])
    return out


_OPEN: dict[tuple, Retriever] = {}
_LOCK = threading.Lock()


def _forget(index_dir: Path) -> None:
    """Drop cached retrievers of ``index_dir`` (it is about to be replaced)."""
    key_dir = str(index_dir.resolve())
    with _LOCK:
        for key in [k for k in _OPEN if k[0] == key_dir]:
            r = _OPEN.pop(key)
            if r.client is not None:
                r.client.close()


def read_passages(index_dir: str | os.PathLike) -> list[Passage]:
    return [Passage.from_dict(obj) for _, obj in iter_jsonl(Path(index_dir) / PASSAGES)]


def open_index(index_dir: str | os.PathLike, embedder: str | None = None, *,
               medcpt_query_dir: str | None = None, medcpt_article_dir: str | None = None,
               models: Mapping[str, Embedder] | None = None) -> Retriever:
    """Open an index for ``embedder`` (default: the one it was built for); cached per process and manifest."""
    index_dir = Path(index_dir)
    manifest = Manifest.read(index_dir)
    name = check_embedder_name(embedder or manifest.embedder, "embedder")
    if name not in manifest.embedders:
        raise IndexMismatchError(f"{index_dir}: index was built for {', '.join(manifest.embedders)}, not {name!r}; "
                                 f"rebuild it with corpus.embedder: {name} (python stages/corpus.py)")
    key = (str(index_dir.resolve()), manifest.created, manifest.corpus_hash, name, medcpt_query_dir, medcpt_article_dir)
    with _LOCK:
        if key in _OPEN and not models:
            return _OPEN[key]
    passages = read_passages(index_dir)
    if len(passages) != manifest.passages:
        raise IndexMismatchError(f"{index_dir / PASSAGES}: {len(passages)} passages, manifest says {manifest.passages}; rebuild the index")
    r = Retriever(index_dir, manifest, name, passages, {p.id: i for i, p in enumerate(passages)})
    dense_name = "minilm" if name == "hybrid" else name
    if dense_name in DENSE:
        meta = manifest.dense[dense_name]
        enc = (models or {}).get(dense_name) or load_embedder(dense_name, medcpt_query_dir or meta.get("query_dir"),
                                                              medcpt_article_dir or meta.get("article_dir"))
        if enc.dim != meta["dim"]:
            raise IndexMismatchError(f"{index_dir}: index vectors have dim {meta['dim']} ({meta['model_id']}), but the {dense_name} "
                                     f"encoder gives dim {enc.dim} ({enc.model_id}); rebuild the index or use the original model")
        if enc.fingerprint != meta["fingerprint"]:
            raise IndexMismatchError(f"{index_dir}: index was embedded with other {dense_name} weights ({meta['model_id']}, "
                                     f"fingerprint {meta['fingerprint']}, now {enc.fingerprint}); rebuild the index")
        r.encoder = enc
        r.client = _chroma_client(query_copy(index_dir, manifest))
        r.collection = r.client.get_collection(meta["collection"], embedding_function=None)
    if name in ("bm25", "hybrid"):
        import bm25s

        r.bm25 = bm25s.BM25.load(str(index_dir / BM25), show_progress=False, verbosity=0)
    if not models:
        with _LOCK:
            _OPEN[key] = r
    return r


def collection_vectors(retriever: Retriever, batch: int = 5000) -> np.ndarray:
    """All stored vectors of the retriever's dense collection, in passage order (for exact-search comparisons)."""
    out = np.zeros((len(retriever.passages), retriever.encoder.dim), dtype=np.float32)
    n = retriever.collection.count()
    for off in range(0, n, batch):
        got = retriever.collection.get(limit=batch, offset=off, include=["embeddings"])
        for i, v in zip(got["ids"], got["embeddings"], strict=True):
            out[retriever.position[i]] = v
    return out
