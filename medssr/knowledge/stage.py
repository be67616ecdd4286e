"""The corpus stage: passages from params.corpus.sources -> index -> coverage.json -> recall@4 report -> MLflow."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from medssr.config import Params, set_offline_env, to_flat_dict
from medssr.files import write_json_atomic
from medssr.knowledge.corpus import load_passages
from medssr.knowledge.embedders import check_embedder_name
from medssr.knowledge.evaluate import coverage, load_entities, recall_at_k
from medssr.knowledge.index import build_index, open_index

COVERAGE = "coverage.json"


def run_corpus(params: Params, raw_dir: str | os.PathLike, entities_path: str | os.PathLike, index_dir: str | os.PathLike,
               report_path: str | os.PathLike, eval_sample: int | None = None, show_progress: bool = True,
               log_mlflow: bool = True) -> dict[str, Any]:
    """Build the passage index for params.corpus from the texts under ``raw_dir`` into ``index_dir``, write its
    coverage.json (of E_rare at ``entities_path``) and the report at ``report_path``, log them; returns the report."""
    set_offline_env()
    cfg = params.corpus
    eval_sample = cfg.eval_sample if eval_sample is None else eval_sample
    check_embedder_name(cfg.embedder, "corpus.embedder")
    for name in cfg.eval_embedders:
        check_embedder_name(name, "corpus.eval_embedders")
    entities = load_entities(entities_path)  # fail before the long build, not after
    passages, stats = load_passages(cfg.sources, raw_dir, cfg.extra_jsonl, cfg.chunk_words, cfg.chunk_overlap,
                                    cfg.max_passages, seed=params.project.seed)
    manifest = build_index(passages, index_dir, cfg.embedder, also=cfg.eval_embedders, batch_size=cfg.batch_size,
                           medcpt_query_dir=cfg.medcpt_query_dir, medcpt_article_dir=cfg.medcpt_article_dir,
                           sources=stats.passages, show_progress=show_progress)
    covered = coverage(entities, passages)
    write_json_atomic(Path(index_dir) / COVERAGE, dict(sorted(covered.items())), ensure_ascii=False)
    recalls = {}
    for name in dict.fromkeys([cfg.embedder, *cfg.eval_embedders]):
        r = recall_at_k(open_index(index_dir, name), entities, covered, k=4, sample=eval_sample, seed=params.project.seed)
        recalls[name] = {"recall": round(r.recall, 4), "queries": r.n_queries, "hits": r.hits, "seconds": r.seconds,
                         "sample": r.sample, "misses_example": r.misses[:10]}
    report = {
        "passages": manifest.passages,
        "passages_per_source": stats.passages,
        "documents_per_source": stats.documents,
        "duplicates_dropped": stats.duplicates_dropped,
        "skipped_per_source": stats.skipped,
        "capped_dropped": stats.capped_dropped,
        "rare_passages": sum(1 for p in passages if p.rare),
        "embedder": cfg.embedder,
        "index_embedders": manifest.embedders,
        "index_dir": str(index_dir),
        "corpus_hash": manifest.corpus_hash,
        "build_seconds": manifest.build_seconds,
        "build_passages_per_s": manifest.passages_per_s,
        "entities": len(entities),
        "covered_entities": len(covered),
        "recall_at_4": {name: v["recall"] for name, v in recalls.items()},
        "recall_eval": recalls,
    }
    write_json_atomic(report_path, report, ensure_ascii=False)
    if log_mlflow:
        from medssr.metric_names import metric
        from medssr.tracking import stage_run

        section = {k: v for k, v in to_flat_dict(params).items() if k.startswith("corpus.")}
        with stage_run("corpus", params, section) as mlflow:
            metrics = {metric("corpus", "passages"): manifest.passages, metric("corpus", "covered_entities"): len(covered),
                       metric("corpus", "build_passages_per_s"): manifest.passages_per_s,
                       metric("corpus", "build_seconds"): manifest.build_seconds}
            metrics.update({metric("corpus", f"recall_at_4/{name}"): v["recall"] for name, v in recalls.items()})
            metrics.update({metric("corpus", f"source_passages/{src}"): n for src, n in stats.passages.items()})
            mlflow.log_metrics(metrics)
            mlflow.log_artifact(str(report_path))
    return report


def summary_line(report: dict[str, Any]) -> str:
    recall = ", ".join(f"{k} {v:.3f}" for k, v in report["recall_at_4"].items())
    return (f"corpus: {report['passages']} passages ({', '.join(f'{k} {v}' for k, v in report['passages_per_source'].items())}), "
            f"built in {report['build_seconds']:.0f} s ({report['build_passages_per_s']:.1f}/s), "
            f"{report['covered_entities']}/{report['entities']} entities covered, recall@4: {recall}")
