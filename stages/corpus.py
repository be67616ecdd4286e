"""DVC stage `corpus`: chunk the bundled retrieval text, embed it, write the chromadb/BM25 index, coverage and recall@4."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run this checkout's code, also in a DVC queue copy

from medssr.stage import add_metrics_arg, metrics_for, run_stage  # noqa: E402


def add_args(ap):
    ap.add_argument("--entities", default="data/prepared/entities.jsonl", help="E_rare from the prepare stage")
    ap.add_argument("--report", default="reports/corpus.json", help="the rich JSON report (its numbers go to metrics/corpus.json)")
    add_metrics_arg(ap, "corpus")
    ap.add_argument("--eval-sample", type=int, default=None, help="recall@4 on a seeded sample of this many entities (default: corpus.eval_sample)")


def body(args, params):
    from medssr.knowledge import run_corpus
    from medssr.knowledge.stage import summary_line

    return summary_line(run_corpus(params, args.entities, args.report, eval_sample=args.eval_sample))


def main(argv: list[str] | None = None) -> int:
    return run_stage("corpus", __doc__, add_args, body, argv, metrics=lambda a: metrics_for(a, "reports/corpus.json", "corpus"))


if __name__ == "__main__":
    sys.exit(main())
