"""DVC stage `label`: the policy votes G times on each synthetic question; the majority is its label (medssr.label)."""

from __future__ import annotations

import argparse
import sys

from medssr.config import load_params, set_offline_env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--model", default=None, help="policy model directory (default: model.dir)")
    ap.add_argument("--synthetic", default="data/synthetic/questions.jsonl", help="synthetic questions to label (JSONL)")
    ap.add_argument("--benchmarks", default=None, help="prepared benchmarks dir for the reliability check (default: <data.out_dir>/benchmarks)")
    ap.add_argument("--out", default="data/labeled/synthetic.jsonl", help="labeled questions (JSONL)")
    ap.add_argument("--report", default="reports/label.json")
    ap.add_argument("--plot", default="reports/label_agreement.png")
    ap.add_argument("--no-progress-bar", action="store_true")
    args = ap.parse_args(argv)
    set_offline_env()
    params = load_params(args.params)
    from medssr.label.run import LabelError, run_label, summary_line
    from medssr.records import RecordError

    try:
        report = run_label(params, args.model or params.model.dir, args.synthetic, args.benchmarks or f"{params.data.out_dir}/benchmarks",
                           args.out, args.report, args.plot, progress=not args.no_progress_bar)
    except (RecordError, LabelError, FileNotFoundError) as e:
        print(f"[label] error: {e}", file=sys.stderr)
        return 1
    print(summary_line(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
