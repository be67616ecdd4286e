"""DVC stage `label`: the policy votes G times on each synthetic question; the majority is its label (medssr.label)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run this checkout's code, also in a DVC queue copy

from medssr.stage import add_metrics_arg, add_path_args, run_stage  # noqa: E402


def add_args(ap):
    add_path_args(ap, ("--model", "policy model directory (dvc.yaml: ${model.dir})"),
                  ("--synthetic", "synthetic questions to label (JSONL)"),
                  ("--benchmarks", "prepared benchmarks dir for the reliability check (dvc.yaml: ${data.out_dir}/benchmarks)"),
                  ("--out", "labeled questions (JSONL)"),
                  ("--report", "the rich JSON report (its numbers go to --metrics)"))
    add_metrics_arg(ap)
    add_path_args(ap, ("--plot", "histogram of vote agreement (PNG)"),
                  ("--plot-data", "that histogram before and after the agreement band, rows {agreement, before, after} (JSON, dvc plots)"))
    ap.add_argument("--no-progress-bar", action="store_true", help="no tqdm bar (logs and CI)")
    ap.add_argument("--dry-run", action="store_true", help="print the prompt rule and the sampling settings, vote on nothing")


def body(args, params):
    from medssr.label.run import run_label, summary_line
    from medssr.stage import fail_if_empty
    from medssr.tracking import log_dataset_inputs, project_root

    if args.dry_run:
        run_label(params, args.model, args.synthetic, args.benchmarks, args.out, args.report, args.plot, dry_run=True, track=False)
        return None
    log_dataset_inputs("label", {"synthetic": args.synthetic})
    report = run_label(params, args.model, args.synthetic, args.benchmarks,
                       args.out, args.report, args.plot, progress=not args.no_progress_bar,
                       reliability_cache=project_root() / ".cache" / "label_reliability", plot_data_path=args.plot_data)
    fail_if_empty(report["kept"], params.label.allow_empty, "label.allow_empty", f"{args.out} (0 of {report['questions']} questions kept)",
                  *empty_cause(report, params, args.synthetic), summary_line(report))
    return summary_line(report)


def empty_cause(report, params, synthetic):
    """Why no question kept a label, read from the stage's report: (cause, params to change)."""
    if report["questions"] == 0:
        return f"{synthetic} holds no questions", "the synthesize stage's synth.* params (it should have failed: synth.allow_empty)"
    why = {"dropped_no_valid": ("no vote committed an answer", "label.sampling.max_new_tokens (votes cut before the answer) or model.policy"),
           "dropped_ties": ("tied votes", "label.ties (seeded breaks ties) or label.sampling.n"),
           "dropped_low_agreement": (f"agreement below label.min_agreement={params.label.min_agreement}", "label.min_agreement"),
           "dropped_high_agreement": (f"agreement above label.max_agreement={params.label.max_agreement} (too easy)",
                                      "label.max_agreement (1.0 keeps unanimous questions)")}
    seen = [(report[k], *why[k]) for k in why if report[k]]
    cause = ", ".join(f"{n} {text}" for n, text, _ in seen)
    return cause, " / ".join(change for n, _, change in sorted(seen, key=lambda t: -t[0]))


def main(argv: list[str] | None = None) -> int:
    return run_stage("label", __doc__, add_args, body, argv, track=lambda a: None if a.dry_run else "label",
                     metrics=lambda a: {} if a.dry_run else {a.metrics: a.report})


if __name__ == "__main__":
    sys.exit(main())
