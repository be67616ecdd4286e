"""DVC stage `synthesize`: new questions from seed pairs, with rare-disease knowledge at ratio α, or steered to a measured
rare-disease share (synth.rare_share_target; tagged with data.rare_* like RareDis-Sub) (medssr.synth)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run this checkout's code, also in a DVC queue copy

from medssr.stage import add_metrics_arg, add_path_args, run_stage  # noqa: E402


def add_args(ap):
    add_path_args(ap, ("--prepared", "prepared data dir: seeds, entities, benchmarks, RareDis-Sub (dvc.yaml: ${data.out_dir})"),
                  ("--corpus", "corpus index dir with coverage.json (dvc.yaml: ${corpus.index_dir})"),
                  ("--out", "synthetic questions (JSONL)"),
                  ("--report", "the rich JSON report (its numbers go to --metrics)"))
    add_metrics_arg(ap)
    ap.add_argument("--progress", default=None, help="resumable progress file (default: <out>.progress.jsonl)")
    ap.add_argument("--prompt-variant", default=None, help="'small': prompts/synth_f*_small.txt (default: synth.prompt_variant)")
    ap.add_argument("--no-progress-bar", action="store_true", help="no tqdm bar (logs and CI)")


def empty_cause(report):
    """Why no question was accepted, read from the stage's report: (cause, params to change)."""
    if report["attempts"] == 0:
        return f"no generation attempt ran (stopped: {report['stopped']})", "synth.max_usd or synth.max_attempts"
    if report["valid"] == 0:
        top = ", ".join(f"{reason} {n}" for reason, n in sorted(report["rejected"].items(), key=lambda kv: -kv[1])[:3])
        example = next(iter(report["rejected_examples"].values()), "")
        return (f"all {report['attempts']} generator responses were rejected ({top}; e.g. {example[:120]!r})",
                "synth.generator (a stronger model, or more max_tokens when replies were cut), synth.prompt_variant or synth.max_attempts")
    share = sum(report.get("share_dropped", {}).values())
    if share:  # e.g. target 0 and every F.1 question named a rare disease
        return (f"all {report['valid']} parsed questions were dropped: {report['contamination_dropped']} as benchmark contamination "
                f"or duplicates, {share} to hold synth.rare_share_target={report['rare_share_target']} ({report['share_dropped']})",
                "synth.rare_share_target, synth.max_attempts or synth.contamination_threshold")
    return (f"all {report['valid']} parsed questions were dropped as benchmark contamination or duplicates",
            "synth.contamination_threshold")


def body(args, params):
    from medssr.stage import fail_if_empty
    from medssr.synth.run import corpus_retriever, load_inputs, run_synthesize, summary_line
    from medssr.tracking import log_dataset_inputs

    prepared = args.prepared
    log_dataset_inputs("synthesize", {"seeds": f"{prepared}/seeds.jsonl", "entities": f"{prepared}/entities.jsonl"})
    inputs = load_inputs(prepared, args.corpus)
    report = run_synthesize(params, inputs, args.out, args.report, args.progress, retriever=corpus_retriever(args.corpus),
                            prompt_variant=args.prompt_variant, show_progress=not args.no_progress_bar)
    if report["target_n"] > 0:
        fail_if_empty(report["accepted"], params.synth.allow_empty, "synth.allow_empty",
                      f"{args.out} (0 of {report['target_n']} questions)", *empty_cause(report), summary_line(report))
    return summary_line(report)


def main(argv: list[str] | None = None) -> int:
    return run_stage("synthesize", __doc__, add_args, body, argv, metrics=lambda a: {a.metrics: a.report})


if __name__ == "__main__":
    sys.exit(main())
