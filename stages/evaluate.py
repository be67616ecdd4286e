"""DVC stage `evaluate`: each checkpoint on the declared benchmarks (prompt F.4, k runs, constrained pass) -> metrics/eval.json."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run this checkout's code, also in a DVC queue copy

from medssr.stage import add_path_args, name_path, run_stage  # noqa: E402


def add_args(ap):
    ap.add_argument("--checkpoint", action="append", default=None,
                    help="evaluate this instead of eval.checkpoints: base, stage1, stage2, a model dir or name=dir (repeatable; last = final)")
    ap.add_argument("--checkpoint-dir", action="append", required=True, type=name_path, metavar="NAME=DIR",
                    help="where the standard checkpoint NAME (base, stage1, stage2) of eval.checkpoints lives (repeatable)")
    add_path_args(ap, ("--prepared", "prepared data dir: benchmarks/ and raredis_sub.jsonl (dvc.yaml: ${data.out_dir})"),
                  ("--metrics", "accuracies per checkpoint and benchmark (numbers only: a DVC metric)"),
                  ("--accuracy", "accuracy per checkpoint and benchmark, one row each (JSON, dvc plots)"),
                  ("--alpha", "the final checkpoint's accuracy at this run's measured rare-disease share and α (JSON, dvc plots across a sweep)"),
                  ("--predictions-dir", "per-question predictions of each checkpoint (JSONL)"))
    ap.add_argument("--family-defaults", action="store_true", default=None,
                    help="decode with each model family's recommended temperature/top_p/top_k (eval.family_defaults)")
    ap.add_argument("--synthetic", default=None, help="the synthesize stage's questions (their rare-disease tags give alpha.json's x)")
    ap.add_argument("--no-progress-bar", action="store_true", help="no tqdm bar (logs and CI)")
    ap.add_argument("--dry-run", action="store_true", help="print each checkpoint's prompt rule and the decoding, sample nothing")


def body(args, params):
    from eval.benchmarks import display_names
    from eval.runner import print_summary, resolve_checkpoints, run_evaluate
    from medssr.tracking import log_dataset_inputs, log_stage_artifacts

    ckpts = resolve_checkpoints(args.checkpoint or params.eval.checkpoints, dict(args.checkpoint_dir))
    prepared = Path(args.prepared)
    if args.dry_run:
        run_evaluate(params, ckpts, prepared, metrics_path=args.metrics, predictions_dir=args.predictions_dir, log_mlflow=False,
                     dry_run=True)
        return None
    log_dataset_inputs("evaluate", {p.stem: p for p in [*sorted((prepared / "benchmarks").glob("*.jsonl")), prepared / "raredis_sub.jsonl"]},
                       context="evaluation")
    results = run_evaluate(params, ckpts, prepared, metrics_path=args.metrics, predictions_dir=args.predictions_dir,
                           family_defaults=args.family_defaults, progress=not args.no_progress_bar)
    write_plots(results, params.synth.rare_ratio, Path(args.accuracy), Path(args.alpha),
                rare_share_measured(args.synthetic), params.synth.rare_share_target)
    log_stage_artifacts("evaluate", [args.metrics, args.accuracy, args.alpha])
    log_stage_artifacts("evaluate", args.predictions_dir, "predictions")
    print_summary(results, display_names(params))


def accuracy_rows(results):
    """--accuracy: one row per checkpoint x benchmark (and its average), for `dvc plots` accuracy per checkpoint."""
    rows = []
    for ckpt, r in results.items():
        rows += [{"checkpoint": ckpt, "benchmark": b, "cell": f"{ckpt} · {b}", "acc": v["acc"]} for b, v in r.items() if isinstance(v, dict) and "acc" in v]
        if isinstance(r.get("avg"), (int, float)):
            rows.append({"checkpoint": ckpt, "benchmark": "avg", "cell": f"{ckpt} · avg", "acc": r["avg"]})
        rare = r.get("raredis") or {}
        if isinstance(rare.get("avg"), (int, float)):
            rows.append({"checkpoint": ckpt, "benchmark": "raredis_avg", "cell": f"{ckpt} · raredis_avg", "acc": rare["avg"]})
    return rows


def rare_share_measured(path):
    """The share of the synthetic questions the synthesize stage tagged rare-disease (``meta.rare_tagged``, the
    benchmark tagger): the paper's rare-disease ratio (§4.2-4.3). None without the file or for an empty one."""
    from medssr.records import read_questions

    if not path or not Path(path).exists():
        return None
    tags = [bool(q.meta.get("rare_tagged")) for q in read_questions(path)]
    return round(sum(tags) / len(tags), 4) if tags else None


def alpha_rows(results, alpha, measured=None, target=None):
    """--alpha: the final checkpoint's averages at this run's measured rare share (the x of Fig. 4), with α and the
    target share beside it; `dvc plots diff` across a sweep overlays the points."""
    if not results:
        return []
    final = results[list(results)[-1]]
    return [{"rare_share_measured": measured, "alpha": alpha, "rare_share_target": target, "eval_avg": final.get("avg"),
             "raredis_avg": (final.get("raredis") or {}).get("avg")}]


def write_plots(results, alpha, accuracy: Path, alpha_path: Path, measured=None, target=None) -> None:
    import json

    for path, rows in ((accuracy, accuracy_rows(results)), (alpha_path, alpha_rows(results, alpha, measured, target))):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    return run_stage("evaluate", __doc__, add_args, body, argv, track=lambda a: None if a.dry_run else "evaluate")


if __name__ == "__main__":
    sys.exit(main())
