"""DVC stage `synthesize`: new questions from seed pairs, with rare-disease knowledge at ratio α (medssr.synth)."""

from __future__ import annotations

import argparse
import sys

from medssr.config import load_params, set_offline_env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--prepared", default=None, help="prepared data dir (default: data.out_dir)")
    ap.add_argument("--corpus", default=None, help="corpus index dir with coverage.json (default: corpus.index_dir)")
    ap.add_argument("--out", default="data/synthetic/questions.jsonl", help="synthetic questions (JSONL)")
    ap.add_argument("--report", default="reports/synth.json", help="where the JSON summary goes")
    ap.add_argument("--progress", default=None, help="resumable progress file (default: <out>.progress.jsonl)")
    ap.add_argument("--prompt-variant", default=None, help="'small': prompts/synth_f*_small.txt (default: synth.prompt_variant)")
    ap.add_argument("--no-progress-bar", action="store_true")
    args = ap.parse_args(argv)
    set_offline_env()
    params = load_params(args.params)
    from medssr.llm import LLMError
    from medssr.records import RecordError
    from medssr.synth.prompts import PromptError
    from medssr.synth.run import SynthError, load_inputs, run_synthesize, summary_line

    try:
        inputs = load_inputs(args.prepared or params.data.out_dir, args.corpus or params.corpus.index_dir)
        report = run_synthesize(params, inputs, args.out, args.report, args.progress, prompt_variant=args.prompt_variant,
                                show_progress=not args.no_progress_bar)
    except (SynthError, LLMError, RecordError, PromptError, FileNotFoundError) as e:
        print(f"[synthesize] error: {e}", file=sys.stderr)
        return 1
    print(summary_line(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
