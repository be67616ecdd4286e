"""Retrieval benchmark: build throughput, top-4 query latency (chromadb HNSW vs exact numpy search), and scaling.

    python bench/retrieval.py --index-dir artifacts/corpus            # the bundled corpus index + 10k/50k/200k scaling
    python bench/retrieval.py --index-dir artifacts/corpus --no-scaling

Prints a table with ratios and writes bench/results/retrieval.json. Timings on a shared 2-core machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from medssr.config import set_offline_env


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000.0, q))  # milliseconds


def timed(fn, items) -> tuple[list[float], list]:
    times, outs = [], []
    for it in items:
        t = time.perf_counter()
        outs.append(fn(it))
        times.append(time.perf_counter() - t)
    return times, outs


def exact_top(vecs: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    scores = vecs @ q
    top = np.argpartition(-scores, k)[:k]
    return top[np.argsort(-scores[top])]


def overlap(a: list, b: list) -> float:
    return len(set(a) & set(b)) / max(len(b), 1)


def corpus_bench(index_dir: Path, n_queries: int, k: int, seed: int) -> dict:
    """Latency of top-k over the real index: end to end, HNSW only, exact numpy, BM25, hybrid; plus build throughput."""
    from medssr.knowledge import open_index, read_passages
    from medssr.knowledge.index import Manifest, _chroma_client, collection_vectors

    manifest = Manifest.read(index_dir)
    dense = open_index(index_dir, "minilm")
    coverage_file = index_dir / "coverage.json"
    names = sorted(json.loads(coverage_file.read_text())) if coverage_file.exists() else [p.title for p in dense.passages]
    queries = random.Random(seed).sample(names, min(n_queries, len(names)))
    vecs = collection_vectors(dense)
    qvecs = dense.encoder.embed_queries(queries)
    dense.search(queries[:2], k)  # warm up

    out: dict = {"passages": manifest.passages, "queries": len(queries), "k": k, "build_seconds": manifest.build_seconds,
                 "build_passages_per_s": manifest.passages_per_s}
    import torch

    default_threads = torch.get_num_threads()
    dense.encoder.query_threads = 1  # the library default for single queries
    t_e2e1, _ = timed(lambda q: dense.search([q], k), queries)
    t_enc1, _ = timed(lambda q: dense.encoder.embed_queries([q]), queries)
    dense.encoder.query_threads = None  # torch's own thread count
    t_e2e, _ = timed(lambda q: dense.search([q], k), queries)
    t_enc, _ = timed(lambda q: dense.encoder.embed_queries([q]), queries)
    dense.encoder.query_threads = 1
    t_hnsw, hnsw = timed(lambda v: dense.collection.query(query_embeddings=v[None, :], n_results=k, include=["distances"])["ids"][0],
                         qvecs)
    t_exact, exact = timed(lambda v: exact_top(vecs, v, k), qvecs)
    ids = [p.id for p in dense.passages]
    out["top4_overlap_hnsw_vs_exact"] = float(np.mean([overlap(h, [ids[i] for i in e]) for h, e in zip(hnsw, exact, strict=True)]))
    rows = {f"retrieve() minilm, {default_threads} threads": t_e2e, f"  query encoding, {default_threads} threads": t_enc,
            "retrieve() minilm, 1 thread": t_e2e1, "  query encoding, 1 thread": t_enc1,
            "  chromadb HNSW search": t_hnsw, "  exact numpy search": t_exact}
    if "bm25" in manifest.embedders:
        lex = open_index(index_dir, "bm25")
        rows["retrieve() bm25"] = timed(lambda q: lex.search([q], k), queries)[0]
        hyb = open_index(index_dir, "hybrid")
        rows["retrieve() hybrid"] = timed(lambda q: hyb.search([q], k), queries)[0]
    out["latency_ms"] = {name: {"p50": pct(t, 50), "p95": pct(t, 95)} for name, t in rows.items()}
    out["exact_over_hnsw_p50"] = pct(t_exact, 50) / pct(t_hnsw, 50)

    # build parts, measured apart: MiniLM embedding of 256 passages, chromadb add of all stored vectors, BM25 indexing
    sample = random.Random(seed).sample(read_passages(index_dir), min(256, manifest.passages))
    t = time.perf_counter()
    dense.encoder.embed_passages(sample)
    out["embed_passages_per_s"] = len(sample) / (time.perf_counter() - t)
    tmp = Path(tempfile.mkdtemp(prefix="bench-chroma-"))
    try:
        client = _chroma_client(tmp)
        col = client.create_collection("bench", embedding_function=None, configuration={"hnsw": {"space": "ip", "ef_construction": 200}})
        step = client.get_max_batch_size()
        t = time.perf_counter()
        for s in range(0, len(ids), step):
            col.add(ids=ids[s : s + step], embeddings=vecs[s : s + step])
        out["chroma_add_vectors_per_s"] = len(ids) / (time.perf_counter() - t)
        client.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    import bm25s

    from medssr.knowledge.corpus import passage_input
    from medssr.knowledge.index import _bm25_tokens

    t = time.perf_counter()
    bm25s.BM25().index(_bm25_tokens([passage_input(p) for p in dense.passages]), show_progress=False)
    out["bm25_index_passages_per_s"] = len(ids) / (time.perf_counter() - t)
    return out


def scaling_bench(sizes: list[int], dim: int, n_queries: int, k: int, seed: int, ef_search: list[int]) -> list[dict]:
    """Grow chromadb collections (one per HNSW ef_search) of random unit vectors; time top-k against exact search at each size."""
    from medssr.knowledge.index import _chroma_client

    rng = np.random.default_rng(seed)
    total = max(sizes)
    data = rng.standard_normal((total, dim), dtype=np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    queries = rng.standard_normal((n_queries, dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    # also queries near stored points (a copy plus noise of half its length): closer to real use than random directions,
    # which are HNSW's worst case (in 384 dimensions all points are almost equally far from a random direction)
    noise = rng.standard_normal((n_queries, dim), dtype=np.float32)
    near = data[rng.choice(min(sizes), n_queries, replace=False)] + 0.5 * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    rows = []
    try:
        client = _chroma_client(tmp)
        # ef_search is fixed when a collection is created (collection.modify did not change results in chromadb 1.5.9)
        cols = {ef: client.create_collection(f"scale-ef{ef}", embedding_function=None,
                                             configuration={"hnsw": {"space": "ip", "ef_construction": 200, "ef_search": ef}})
                for ef in ef_search}
        step, have = client.get_max_batch_size(), 0
        for size in sorted(sizes):
            vecs = data[:size]
            exact = {label: timed(lambda v, vecs=vecs: exact_top(vecs, v, k), qs) for label, qs in (("random", queries), ("near", near))}
            for ef, col in cols.items():
                t = time.perf_counter()
                for s in range(have, size, step):
                    e = min(s + step, size)
                    col.add(ids=[str(i) for i in range(s, e)], embeddings=data[s:e])
                row = {"vectors": size, "ef_search": ef, "add_vectors_per_s": (size - have) / (time.perf_counter() - t)}
                for label, qs in (("random", queries), ("near", near)):
                    t_h, hnsw = timed(lambda v, col=col: col.query(query_embeddings=v[None, :], n_results=k, include=["distances"])["ids"][0], qs)
                    t_x, top = exact[label]
                    row[label] = {"hnsw_p50_ms": pct(t_h, 50), "hnsw_p95_ms": pct(t_h, 95), "exact_p50_ms": pct(t_x, 50),
                                  "exact_p95_ms": pct(t_x, 95), "exact_over_hnsw_p50": pct(t_x, 50) / pct(t_h, 50),
                                  "top4_overlap": float(np.mean([overlap(h, [str(i) for i in e]) for h, e in zip(hnsw, top, strict=True)]))}
                rows.append(row)
            have = size
            print(f"  scaling: {size} vectors done", flush=True)
        client.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def print_tables(res: dict) -> None:
    c = res.get("corpus")
    if c:
        print(f"\nBundled corpus index: {c['passages']} passages, {c['queries']} entity-name queries, top-{c['k']}")
        print(f"{'path':34s} {'p50 ms':>8s} {'p95 ms':>8s}")
        for name, v in c["latency_ms"].items():
            print(f"{name:34s} {v['p50']:8.2f} {v['p95']:8.2f}")
        print(f"exact/HNSW p50 ratio {c['exact_over_hnsw_p50']:.2f}x; top-4 overlap HNSW vs exact {c['top4_overlap_hnsw_vs_exact']:.3f}")
        print(f"build (manifest): {c['build_seconds']:.0f} s = {c['build_passages_per_s']:.1f} passages/s; parts: MiniLM embed "
              f"{c['embed_passages_per_s']:.1f}/s, chromadb add {c['chroma_add_vectors_per_s']:.0f}/s, BM25 index {c['bm25_index_passages_per_s']:.0f}/s")
    rows = res.get("scaling")
    if rows:
        print(f"\nScaling, random unit vectors dim {res['scaling_dim']}, top-4 (HNSW = chromadb, exact = numpy)")
        print(f"{'vectors':>8s} {'ef':>4s} {'queries':>7s} {'HNSW p50':>9s} {'HNSW p95':>9s} {'exact p50':>10s} {'exact p95':>10s} {'exact/HNSW':>10s} "
              f"{'overlap':>8s} {'add/s':>8s}")
        for r in rows:
            for label in ("random", "near"):
                v = r[label]
                print(f"{r['vectors']:8d} {r['ef_search']:4d} {label:>7s} {v['hnsw_p50_ms']:9.2f} {v['hnsw_p95_ms']:9.2f} {v['exact_p50_ms']:10.2f} "
                      f"{v['exact_p95_ms']:10.2f} {v['exact_over_hnsw_p50']:9.2f}x {v['top4_overlap']:8.3f} {r['add_vectors_per_s']:8.0f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index-dir", default=None, help="the corpus stage's index (default: corpus.index_dir of params.yaml)")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sizes", default="10000,50000,200000")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--ef-search", default="100,400", help="HNSW ef_search values for the scaling run (index default: 100)")
    ap.add_argument("--no-scaling", action="store_true")
    ap.add_argument("--no-corpus", action="store_true")
    ap.add_argument("--out", default="bench/results/retrieval.json")
    args = ap.parse_args(argv)
    set_offline_env()
    import os

    res: dict = {"cpu_count": os.cpu_count(), "note": "shared machine: other jobs ran at the same time; timings are noisy"}
    if not args.no_corpus:
        if args.index_dir is None:
            from medssr.config import load_params

            args.index_dir = load_params("params.yaml").corpus.index_dir
        res["corpus"] = corpus_bench(Path(args.index_dir), args.queries, args.k, args.seed)
    if not args.no_scaling:
        res["scaling_dim"] = args.dim
        res["scaling"] = scaling_bench([int(s) for s in args.sizes.split(",")], args.dim, args.queries, args.k, args.seed,
                                       [int(e) for e in args.ef_search.split(",")])
    print_tables(res)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
