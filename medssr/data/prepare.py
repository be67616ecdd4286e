"""The prepare stage: real training rows without benchmark leakage, seeds, benchmarks, RareDis-Sub, E_rare.

Outputs under ``out_dir`` (dvc.yaml: ``${data.out_dir}``): train.jsonl, seeds.jsonl, benchmarks/<name>.jsonl,
raredis_sub.jsonl, entities.jsonl (and rejected.jsonl when ``data.strict`` is false); the summary goes to the
report (reports/prepare.json) and to MLflow as ``prepare/...`` metrics.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medssr.config import ConfigError, TrainSourceCfg
from medssr.data.categories import classify_category
from medssr.data.leakage import build_index, normalize_text, remove_leakage
from medssr.data.loaders import benchmark_name_for, load_benchmark_file, load_benchmarks, load_train_source, source_path
from medssr.data.rare import STOPLIST, build_tagger, load_entities, normalize_name, tag_question
from medssr.data.reasoning import is_reasoning_heavy, select_seeds
from medssr.files import write_json_atomic
from medssr.records import CATEGORIES, Question, RecordError, write_jsonl


def _progress(it, **kw):
    from tqdm import tqdm

    return tqdm(it, disable=None, leave=False, **kw)


def stratified_cap(rows: list[Question], cap: int | None, seed: int) -> list[Question]:
    """At most ``cap`` rows, each source keeping its share (largest remainder), sampled with a seeded RNG; order kept."""
    if cap is None or len(rows) <= cap:
        return list(rows)
    by_source: dict[str, list[int]] = {}
    for i, q in enumerate(rows):
        by_source.setdefault(q.source, []).append(i)
    exact = {s: cap * len(ix) / len(rows) for s, ix in by_source.items()}
    quota = {s: int(x) for s, x in exact.items()}
    for s in sorted(exact, key=lambda s: (quota[s] - exact[s], s))[: cap - sum(quota.values())]:
        quota[s] += 1
    rng = random.Random(seed)
    keep: set[int] = set()
    for s in sorted(by_source):
        keep.update(rng.sample(by_source[s], quota[s]))
    return [q for i, q in enumerate(rows) if i in keep]


def _check_not_empty(rows: list[Question], path: str | os.PathLike, key: str, allow: bool, rejected: list[dict]) -> None:
    """An empty benchmark or extra RareDis file would silently evaluate, deduplicate and tag nothing: fail naming it."""
    if rows or allow:
        return
    quarantined = sum(r.get("file") == str(path) for r in rejected)
    why = f"all {quarantined} records were quarantined (see rejected.jsonl)" if quarantined else "no records"
    raise RecordError(path, None, "<file>", f"{why}; fix the file or remove it from {key}, or set data.allow_empty: true")


def run_prepare(params: Any, raw_dir: str | os.PathLike, out_dir: str | os.PathLike, report_path: str | os.PathLike,
                classifier: Callable[[Question], bool] | None = None, category_classifier: Callable[[Question], str] | None = None,
                tag_scope: str | None = None, include_gard: bool | None = None, min_option_overlap: float | None = None,
                extra_stoplist: tuple[str, ...] | None = None, log_mlflow: bool = True) -> dict[str, Any]:
    """Run the stage from validated ``params`` (medssr.config.Params): read ``raw_dir``, write ``out_dir`` and the
    summary to ``report_path`` (the stage's --raw-dir, --out-dir, --report); returns the summary.

    ``classifier`` decides reasoning-heavy seeds (default: the heuristic), ``category_classifier`` the
    RareDis-Sub category (default: the keyword rules); the LLM versions plug in here. ``tag_scope``,
    ``include_gard``, ``min_option_overlap`` and ``extra_stoplist`` default to ``data.rare_scope``,
    ``data.rare_gard``, ``data.leakage_option_overlap`` and ``data.rare_stoplist``.
    """
    t0 = time.time()
    cfg = params.data
    tag_scope = cfg.rare_scope if tag_scope is None else tag_scope
    include_gard = cfg.rare_gard if include_gard is None else include_gard
    min_option_overlap = cfg.leakage_option_overlap if min_option_overlap is None else min_option_overlap
    extra_stoplist = tuple(cfg.rare_stoplist) if extra_stoplist is None else extra_stoplist
    raw, out = Path(raw_dir), Path(out_dir)
    if not raw.is_dir():
        raise FileNotFoundError(f"--raw-dir (data.raw_dir): {raw} is not a directory (the repository ships the real data under data/raw)")
    if classifier is None:
        if cfg.reasoning_filter != "heuristic":
            raise ConfigError(f"data.reasoning_filter={cfg.reasoning_filter!r} needs a classifier passed to run_prepare "
                             "(stages/prepare.py builds it from synth.generator)")
        classifier = is_reasoning_heavy
    if category_classifier is None:
        if cfg.category_classifier != "rules":
            raise ConfigError(f"data.category_classifier={cfg.category_classifier!r} needs a classifier passed to run_prepare")
        category_classifier = classify_category
    sources = list(cfg.train) if cfg.train_sources is None else list(cfg.train_sources)
    unknown = [s for s in sources if s not in cfg.train]
    if unknown:
        raise ConfigError(f"data.train_sources: {unknown[0]!r} is not declared in data.train (declared: {', '.join(cfg.train)})")
    if not cfg.benchmarks:
        raise ConfigError("data.benchmarks is empty: declare each benchmark as `name: {file: benchmarks/<file>.json.gz, display: ...}`")
    rejected: list[dict] = []
    seed = params.project.seed

    # load everything first, so a bad row fails the stage before any slow work; every declared benchmark
    # takes part in leakage removal and rare tagging, and its prepared file feeds the contamination index
    benchmarks = load_benchmarks(cfg.benchmarks, raw, strict=cfg.strict, rejected=rejected)
    extras: dict[str, list[Question]] = {}
    for i, p in enumerate(cfg.extra_raredis):
        decl = p if isinstance(p, TrainSourceCfg) else None
        path = source_path(decl, raw) if decl else p  # a plain string entry is read as given (a benchmark JSON list)
        key = "redisqa" if decl and decl.format == "redisqa" else benchmark_name_for(path)
        while key in benchmarks or key in extras:
            key += "-extra"
        if decl and decl.format == "redisqa":
            extras[key] = load_train_source(key, decl, raw, cfg.strict, rejected, key=f"data.extra_raredis[{i}]", label="test")
        else:
            if decl and not path.exists():
                raise FileNotFoundError(f"data.extra_raredis[{i}].path: {path}: no such file")
            extras[key] = load_benchmark_file(path, key, cfg.strict, rejected)
            if decl and decl.max_rows is not None:
                extras[key] = extras[key][: decl.max_rows]
        _check_not_empty(extras[key], path, "data.extra_raredis", cfg.allow_empty, rejected)
    for name, rows in benchmarks.items():
        _check_not_empty(rows, raw / cfg.benchmarks[name].file, f"data.benchmarks.{name}", cfg.allow_empty, rejected)
    index = build_index(q for rows in (*benchmarks.values(), *extras.values()) for q in rows)
    loaded: dict[str, int] = {}
    train_pool: list[Question] = []
    leakage: dict[str, dict[str, int]] = {}
    duplicates: dict[str, int] = {}
    seen_ids: set[str] = set()
    for source in sources:  # leakage is checked against every benchmark and extra RareDis file
        rows = load_train_source(source, cfg.train[source], raw, cfg.strict, rejected)
        loaded[source] = len(rows)
        # the same row declared twice (MedMCQA from its official file and from Hugging Face) is kept once
        fresh = [q for q in rows if q.id not in seen_ids]
        duplicates[source] = len(rows) - len(fresh)
        seen_ids.update(q.id for q in fresh)
        kept, removed = remove_leakage(fresh, index, min_option_overlap)
        leakage[source] = removed.get(source, {})
        train_pool.extend(kept)

    # E_rare and the tagger
    entities = load_entities(raw, include_gard=include_gard)
    stoplist = STOPLIST | frozenset(extra_stoplist)
    tagger = build_tagger(entities, min_len=cfg.min_entity_len, stoplist=stoplist)
    stop = {normalize_name(s) for s in stoplist}
    kept_entities = [e for e in entities if normalize_name(e.name) not in stop]

    # RareDis-Sub: tagged benchmark questions plus every extra row, each with a category
    raredis: list[Question] = []
    seen_text: set[str] = set()
    rare_counts: dict[str, int] = {}
    needs_category: list[Question] = []
    for name, rows in _progress(list(benchmarks.items()) + list(extras.items()), desc="tag benchmarks"):
        n_rare = 0
        for q in rows:
            tag = tag_question(q, tagger, tag_scope)
            if tag.name:
                q.rare_disease = q.rare_disease or tag.name
                q.meta["rare_matches"], q.meta["rare_where"] = tag.names, tag.where
            elif name not in extras:
                continue
            n_rare += 1
            q.rare_disease = q.rare_disease or "unspecified"  # an extra RareDis file is rare by construction
            if q.category not in CATEGORIES:
                needs_category.append(q)
            key = normalize_text(q.render())
            if key not in seen_text:
                seen_text.add(key)
                raredis.append(q)
        rare_counts[name] = n_rare
    # one batch, so an LLM classifier (data.category_classifier: llm) runs its requests concurrently
    many = getattr(category_classifier, "classify_many", None)
    for q, c in zip(needs_category, many(needs_category) if many else [category_classifier(q) for q in needs_category], strict=True):
        q.category = c
    for q in _progress(train_pool, desc="tag train"):
        tag = tag_question(q, tagger, tag_scope)
        if tag.name:
            q.rare_disease, q.meta["rare_matches"] = tag.name, tag.names

    seeds = select_seeds(train_pool, classifier, cfg.max_seeds, seed)
    train = stratified_cap(train_pool, cfg.max_train, seed)

    # write
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "seeds.jsonl", seeds)
    for name, rows in benchmarks.items():
        write_jsonl(out / "benchmarks" / f"{name}.jsonl", rows)
    for stale in (out / "benchmarks").glob("*.jsonl"):  # a benchmark no longer declared must not stay in the contamination index
        if stale.stem not in benchmarks:
            stale.unlink()
    write_jsonl(out / "raredis_sub.jsonl", raredis)
    write_jsonl(out / "entities.jsonl", (e.to_dict() for e in kept_entities))
    if rejected:
        write_jsonl(out / "rejected.jsonl", rejected)
    else:
        (out / "rejected.jsonl").unlink(missing_ok=True)  # no stale quarantine from an earlier run

    split_counts = Counter((q.source, q.meta.get("orig_split", q.split)) for q in train)
    summary: dict[str, Any] = {
        "train_rows": len(train),
        "train_pool_rows": len(train_pool),
        "train_by_source": dict(Counter(q.source for q in train)),
        "train_by_source_split": {f"{s}/{sp}": n for (s, sp), n in sorted(split_counts.items())},
        "loaded_by_source": loaded,
        "duplicates_removed": duplicates,
        "leakage_removed": {s: sum(r.values()) for s, r in leakage.items()},
        "leakage_removed_by_reason": leakage,
        "seeds": len(seeds),
        "seeds_by_source": dict(Counter(q.source for q in seeds)),
        "benchmarks": {n: len(r) for n, r in benchmarks.items()},
        "extra_raredis": {n: len(r) for n, r in extras.items()},
        "rare": {n: {"ours": c, "paper": cfg.benchmarks[n].paper_rare if n in cfg.benchmarks else None} for n, c in rare_counts.items()},
        "raredis_sub": len(raredis),
        "raredis_sub_by_source": dict(Counter(q.source for q in raredis)),
        "categories": {c: sum(q.category == c for q in raredis) for c in CATEGORIES},
        "entities": len(kept_entities),
        "tagger_surfaces": tagger.n_surfaces,
        "tag_scope": tag_scope,
        "quarantined": len(rejected),
        "train_asked": cfg.max_train,
        "train_note": train_volume_note(cfg.max_train, len(train_pool), loaded, leakage, len(seeds)),
        "seconds": round(time.time() - t0, 2),
    }
    write_json_atomic(report_path, summary)

    if log_mlflow:
        _log_mlflow(params, summary)
    return summary


def _log_mlflow(params: Any, summary: dict[str, Any]) -> None:
    from medssr.config import to_flat_dict
    from medssr.metric_names import metric, prepare_category_metric
    from medssr.tracking import stage_run

    m = {metric("prepare", "train_rows"): summary["train_rows"], metric("prepare", "seeds"): summary["seeds"],
         metric("prepare", "raredis_sub"): summary["raredis_sub"], metric("prepare", "entities"): summary["entities"],
         metric("prepare", "quarantined"): summary["quarantined"]}
    m.update({metric("prepare", f"train_rows/{s}"): n for s, n in summary["train_by_source"].items()})
    m.update({metric("prepare", f"leakage_removed/{s}"): n for s, n in summary["leakage_removed"].items()})
    m.update({metric("prepare", f"rare/{b}"): r["ours"] for b, r in summary["rare"].items()})
    m.update({prepare_category_metric(c): n for c, n in summary["categories"].items()})
    section = {k: v for k, v in to_flat_dict(params).items() if k.startswith("data.") or k == "project.seed"}
    with stage_run("prepare", params, section=section) as mlflow:
        mlflow.log_metrics({k: float(v) for k, v in m.items()})


def train_volume_note(asked: int | None, pool: int, loaded: dict[str, int], leakage: dict[str, dict[str, int]],
                      heavy: int) -> str | None:
    """What a params file that asks for ``asked`` real rows (``data.max_train``) will really train on, and why; None when it gets them.

    Stage II trains on train.jsonl, so a paper profile (43,000 asked) learns here, at prepare time, that the bundled
    sets give about 10K rows, and what to declare to reach its volume.
    """
    if asked is None or pool >= asked:
        return None
    removed = sum(sum(r.values()) for r in leakage.values())
    return (f"stage II will train on {pool:,} real rows (asked {asked:,} by data.max_train): the declared training data "
            f"({', '.join(f'{s} {n:,}' for s, n in loaded.items())}) has {pool:,} after leakage removal ({removed:,} removed), "
            f"{heavy:,} of them picked as reasoning-heavy seeds; declare MedQA train and MedMCQA train under data.train "
            "(see the commented entries in params/paper-*.yaml) to reach it")


def summary_line(summary: dict[str, Any]) -> str:
    """The stage's one-line summary."""
    rare = sum(r["ours"] for r in summary["rare"].values())
    return (f"prepare: {summary['train_rows']} train rows ({', '.join(f'{s} {n}' for s, n in summary['train_by_source'].items())}), "
            f"{summary['seeds']} seeds, {sum(summary['benchmarks'].values())} benchmark questions, "
            f"RareDis-Sub {summary['raredis_sub']} ({rare} tagged), {summary['entities']} rare entities, "
            f"leakage removed {sum(summary['leakage_removed'].values())}, quarantined {summary['quarantined']} "
            f"in {summary['seconds']}s" + (f"\n[prepare] {summary['train_note']}" if summary.get("train_note") else ""))
