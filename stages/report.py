"""DVC stage `report`: reports/report.md and PNG figures (paper Tables 1-4, Figs. 4 and 6) from the experiment's MLflow runs."""

from __future__ import annotations

import argparse
import sys

from medssr.config import load_params, set_offline_env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="reports")
    ap.add_argument("--experiment", default=None, help="MLflow experiment (default: project.experiment)")
    args = ap.parse_args(argv)
    set_offline_env()
    from eval.report import main_report
    from eval.runner import eval_json_headlines, stage_headlines
    from medssr.tracking import log_summary_to_parent

    params = load_params(args.params)
    # This stage always runs: when DVC restored every other stage from its cache (a sweep value that changes
    # nothing downstream), this is what still puts the headline numbers on this execution's parent run.
    log_summary_to_parent(params, {**stage_headlines(args.out), **eval_json_headlines()})
    return main_report(out_dir=args.out, experiment=args.experiment or params.project.experiment)


if __name__ == "__main__":
    sys.exit(main())
