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

    return main_report(out_dir=args.out, experiment=args.experiment or load_params(args.params).project.experiment)


if __name__ == "__main__":
    sys.exit(main())
