"""DVC stage `prepare`: real training rows, seeds, benchmarks, RareDis-Sub and E_rare (medssr.data.prepare)."""

from __future__ import annotations

import argparse
import sys

from medssr.config import ConfigError, load_params, set_offline_env


def llm_classifiers(params):
    """The paper's LLM reasoning filter (prompt F.3) and category classifier, through synth.generator, when params ask."""
    if params.data.reasoning_filter != "llm" and params.data.category_classifier != "llm":
        return None, None
    from pathlib import Path

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--report", default="reports/prepare.json", help="where the JSON summary goes")
    args = ap.parse_args(argv)
    set_offline_env()
    from medssr.data.prepare import run_prepare, summary_line
    from medssr.records import RecordError

    try:
        params = load_params(args.params)
        classifier, category = llm_classifiers(params)
        summary = run_prepare(params, classifier=classifier, category_classifier=category, report_path=args.report)
        for name, c in (("reasoning", classifier), ("category", category)):
            if c is not None:
                print(f"[prepare] LLM {name} classifier ({c.generator.name}): {c.fallbacks} replies fell back to the rule")
        print(summary_line(summary))
    except (ConfigError, RecordError, FileNotFoundError, ValueError) as e:
        print(f"prepare: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
