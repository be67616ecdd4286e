"""DVC stage `label`: the policy votes G times on each synthetic question; the majority is its label (medssr.label)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run this checkout's code, also in a DVC queue copy

from medssr.stage import run_stage  # noqa: E402


def add_args(ap):
    ap.add_argument("--model", default=None, help="policy model directory (default: model.dir)")
    ap.add_argument("--synthetic", default="data/synthetic/questions.jsonl", help="synthetic questions to label (JSONL)")
    ap.add_argument("--benchmarks", default=None, help="prepared benchmarks dir for the reliability check (default: <data.out_dir>/benchmarks)")
    ap.add_argument("--out", default="data/labeled/synthetic.jsonl", help="labeled questions (JSONL)")
    ap.add_argument("--report", default="reports/label.json")
    ap.add_argument("--plot", default="reports/label_agreement.png")
    ap.add_argument("--no-progress-bar", action="store_true")


def body(args, params):
    from medssr.label.run import run_label, summary_line
    from medssr.tracking import project_root

    report = run_label(params, args.model or params.model.dir, args.synthetic, args.benchmarks or f"{params.data.out_dir}/benchmarks",
                       args.out, args.report, args.plot, progress=not args.no_progress_bar,
                       reliability_cache=project_root() / ".cache" / "label_reliability")
    return summary_line(report)


def main(argv: list[str] | None = None) -> int:
    return run_stage("label", __doc__, add_args, body, argv)


if __name__ == "__main__":
    sys.exit(main())
