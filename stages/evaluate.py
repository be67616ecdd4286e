"""DVC stage `evaluate`: each checkpoint on the declared benchmarks (prompt F.4, k runs, constrained pass) -> metrics/eval.json."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run this checkout's code, also in a DVC queue copy

from medssr.stage import run_stage  # noqa: E402


def add_args(ap):
    ap.add_argument("--checkpoint", action="append", default=None,
                    help="evaluate this instead of eval.checkpoints: base, stage1, stage2, a model dir or name=dir (repeatable; last = final)")
    ap.add_argument("--metrics", default="metrics/eval.json")
    ap.add_argument("--predictions-dir", default="data/eval")
    ap.add_argument("--reports-dir", default="reports", help="stage reports whose headline metrics go onto the pipeline's MLflow run")
    ap.add_argument("--family-defaults", action="store_true", default=None,
                    help="decode with each model family's recommended temperature/top_p/top_k (eval.family_defaults)")
    ap.add_argument("--no-progress-bar", action="store_true")


def body(args, params):
    from eval.benchmarks import display_names
    from eval.runner import print_summary, resolve_checkpoints, run_evaluate

    ckpts = resolve_checkpoints(args.checkpoint or params.eval.checkpoints, params.model.dir)
    results = run_evaluate(params, ckpts, metrics_path=args.metrics, predictions_dir=args.predictions_dir, reports_dir=args.reports_dir,
                           family_defaults=args.family_defaults, progress=not args.no_progress_bar)
    print_summary(results, display_names(params))


def main(argv: list[str] | None = None) -> int:
    return run_stage("evaluate", __doc__, add_args, body, argv)


if __name__ == "__main__":
    sys.exit(main())
