"""DVC stage `label`: the policy votes G times on each synthetic question; the majority is its label (medssr.label)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run this checkout's code, also in a DVC queue copy

from medssr.stage import add_metrics_arg, metrics_for, run_stage  # noqa: E402


def add_args(ap):
    ap.add_argument("--model", default=None, help="policy model directory (default: model.dir)")
    ap.add_argument("--synthetic", default="data/synthetic/questions.jsonl", help="synthetic questions to label (JSONL)")
    ap.add_argument("--benchmarks", default=None, help="prepared benchmarks dir for the reliability check (default: <data.out_dir>/benchmarks)")
    ap.add_argument("--out", default="data/labeled/synthetic.jsonl", help="labeled questions (JSONL)")
    ap.add_argument("--report", default="reports/label.json", help="the rich JSON report (its numbers go to metrics/label.json)")
    add_metrics_arg(ap, "label")
    ap.add_argument("--plot", default="reports/label_agreement.png", help="histogram of vote agreement (PNG)")
    ap.add_argument("--no-progress-bar", action="store_true", help="no tqdm bar (logs and CI)")


def body(args, params):
    from medssr.label.run import run_label, summary_line
    from medssr.stage import fail_if_empty
    from medssr.tracking import log_dataset_inputs, project_root

    log_dataset_inputs("label", {"synthetic": args.synthetic})
    report = run_label(params, args.model or params.model.dir, args.synthetic, args.benchmarks or f"{params.data.out_dir}/benchmarks",
                       args.out, args.report, args.plot, progress=not args.no_progress_bar,
                       reliability_cache=project_root() / ".cache" / "label_reliability")
    fail_if_empty(report["kept"], params.label.allow_empty, "label.allow_empty", f"{args.out} (0 of {report['questions']} questions kept)",
                  *empty_cause(report, params, args.synthetic), summary_line(report))
    return summary_line(report)


def empty_cause(report, params, synthetic):
    """Why no question kept a label, read from the stage's report: (cause, params to change)."""
    if report["questions"] == 0:
        return f"{synthetic} holds no questions", "the synthesize stage's synth.* params (it should have failed: synth.allow_empty)"
    why = {"dropped_no_valid": ("no vote committed an answer", "label.sampling.max_new_tokens (votes cut before the answer) or model.policy"),
           "dropped_ties": ("tied votes", "label.ties (seeded breaks ties) or label.sampling.n"),
           "dropped_low_agreement": (f"agreement below label.min_agreement={params.label.min_agreement}", "label.min_agreement")}
    seen = [(report[k], *why[k]) for k in why if report[k]]
    cause = ", ".join(f"{n} {text}" for n, text, _ in seen)
    return cause, " / ".join(change for n, _, change in sorted(seen, key=lambda t: -t[0]))


def main(argv: list[str] | None = None) -> int:
    return run_stage("label", __doc__, add_args, body, argv, metrics=lambda a: metrics_for(a, "reports/label.json", "label"))


if __name__ == "__main__":
    sys.exit(main())
