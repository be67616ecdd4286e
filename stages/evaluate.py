"""DVC stage `evaluate`: each checkpoint on the declared benchmarks (prompt F.4, k runs, constrained pass) -> metrics/eval.json."""

from __future__ import annotations

import argparse
import sys

from medssr.config import load_params, set_offline_env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--checkpoint", action="append", default=None,
                    help="evaluate this instead of eval.checkpoints: base, stage1, stage2, a model dir or name=dir (repeatable; last = final)")
    ap.add_argument("--metrics", default="metrics/eval.json")
    ap.add_argument("--predictions-dir", default="data/eval")
    ap.add_argument("--reports-dir", default="reports", help="stage reports whose headline metrics go onto the pipeline's MLflow run")
    ap.add_argument("--family-defaults", action="store_true", default=None,
                    help="decode with each model family's recommended temperature/top_p/top_k (eval.family_defaults)")
    ap.add_argument("--no-progress-bar", action="store_true")
    args = ap.parse_args(argv)
    set_offline_env()
    params = load_params(args.params)
    from eval.benchmarks import BenchmarkError
    from eval.runner import EvalError, print_summary, resolve_checkpoints, run_evaluate
    from medssr.records import RecordError

    try:
        ckpts = resolve_checkpoints(args.checkpoint or params.eval.checkpoints, params.model.dir)
        results = run_evaluate(params, ckpts, metrics_path=args.metrics, predictions_dir=args.predictions_dir, reports_dir=args.reports_dir,
                               family_defaults=args.family_defaults, progress=not args.no_progress_bar)
    except (EvalError, BenchmarkError, RecordError, FileNotFoundError) as e:
        print(f"[evaluate] error: {e}", file=sys.stderr)
        return 1
    print_summary(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
