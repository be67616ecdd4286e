"""DVC stage `prepare`: real training rows, seeds, benchmarks, RareDis-Sub and E_rare (medssr.data.prepare)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run this checkout's code, also in a DVC queue copy

from medssr.stage import add_metrics_arg, add_path_args, run_stage  # noqa: E402


def llm_classifiers(params):
    """The paper's LLM reasoning filter (prompt F.3) and category classifier, through synth.generator, when params ask."""
    if params.data.reasoning_filter != "llm" and params.data.category_classifier != "llm":
        return None, None
    from medssr.data.categories import classify_category as rule_category
    from medssr.data.reasoning import is_reasoning_heavy
    from medssr.llm import make_generator
    from medssr.synth.classify import BatchedLLMClassifier, classify_category, classify_reasoning
    from medssr.tracking import project_root

    cache = Path(params.synth.cache_dir)
    gen = make_generator(params.synth.generator, cache if cache.is_absolute() else project_root() / cache, params.synth.prices)
    reasoning = BatchedLLMClassifier(classify_reasoning, gen, is_reasoning_heavy) if params.data.reasoning_filter == "llm" else None
    category = BatchedLLMClassifier(classify_category, gen, rule_category) if params.data.category_classifier == "llm" else None
    return reasoning, category


def add_args(ap):
    add_path_args(ap, ("--raw-dir", "the raw data: training files, benchmarks, RareDis, the GARD corpus file (dvc.yaml: ${data.raw_dir})"),
                  ("--out-dir", "the prepared data dir (dvc.yaml: ${data.out_dir})"),
                  ("--report", "the rich JSON report (its numbers go to --metrics)"))
    add_metrics_arg(ap)


def body(args, params):
    from medssr.data.prepare import run_prepare, summary_line
    from medssr.stage import fail_if_empty

    classifier, category = llm_classifiers(params)
    summary = run_prepare(params, args.raw_dir, args.out_dir, args.report, classifier=classifier, category_classifier=category)
    for name, c in (("reasoning", classifier), ("category", category)):
        if c is not None:
            print(f"[prepare] LLM {name} classifier ({c.generator.name}): {c.fallbacks} replies fell back to the rule")
    out = args.out_dir
    fail_if_empty(summary["train_rows"], params.data.allow_empty, "data.allow_empty", f"{out}/train.jsonl",
                  f"no training row is left of {sum(summary['loaded_by_source'].values())} loaded (leakage removed "
                  f"{sum(summary['leakage_removed'].values())})", "data.train (its declared files and formats), data.train_sources or data.max_train", summary_line(summary))
    fail_if_empty(summary["seeds"], params.data.allow_empty, "data.allow_empty", f"{out}/seeds.jsonl",
                  f"none of the {summary['train_rows']} training rows passed the reasoning filter", "data.reasoning_filter or data.max_seeds",
                  summary_line(summary))
    return summary_line(summary)


def main(argv: list[str] | None = None) -> int:
    return run_stage("prepare", __doc__, add_args, body, argv, metrics=lambda a: {a.metrics: a.report})


if __name__ == "__main__":
    sys.exit(main())
