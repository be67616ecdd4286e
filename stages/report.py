"""DVC stage `report`: reports/report.md and PNG figures (paper Tables 1-4, Figs. 4 and 6) from the experiment's MLflow runs."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run this checkout's code, also in a DVC queue copy

from medssr.stage import add_path_args, name_path, run_stage  # noqa: E402


def add_args(ap):
    add_path_args(ap, ("--out", "directory of report.md and figures/"),
                  ("--eval-metrics", "the evaluate stage's metrics (metrics/eval.json): the final checkpoint's headline accuracies"))
    ap.add_argument("--stage-report", action="append", required=True, type=name_path, metavar="PREFIX=FILE",
                    help="a stage report whose numeric headlines go onto the pipeline's MLflow run under PREFIX (repeatable)")
    ap.add_argument("--experiment", default=None, help="MLflow experiment (default: project.experiment)")


def body(args, params):
    from eval.report import main_report
    from eval.runner import eval_json_headlines, stage_headlines
    from medssr.tracking import log_parent_artifacts, log_summary_to_parent

    # This stage always runs: when DVC restored every other stage from its cache (a sweep value that changes
    # nothing downstream), this is what still puts the headline numbers on this execution's parent run.
    log_summary_to_parent(params, {**stage_headlines(dict(args.stage_report)), **eval_json_headlines(args.eval_metrics)})
    main_report(out_dir=args.out, experiment=args.experiment or params.project.experiment)
    out = Path(args.out)
    log_parent_artifacts(params, [out / "report.md", out / "figures"])  # where a reader opens first: the pipeline's run


def main(argv: list[str] | None = None) -> int:
    return run_stage("report", __doc__, add_args, body, argv)


if __name__ == "__main__":
    sys.exit(main())
