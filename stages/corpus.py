"""DVC stage `corpus`: chunk the bundled retrieval text, embed it, write the chromadb/BM25 index, coverage and recall@4."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run this checkout's code, also in a DVC queue copy

from medssr.stage import add_metrics_arg, add_path_args, run_stage  # noqa: E402


def add_args(ap):
    add_path_args(ap, ("--raw-dir", "the raw data: corpus texts under corpus/, RareDis under rare_disease/ (dvc.yaml: ${data.raw_dir})"),
                  ("--entities", "E_rare from the prepare stage"),
                  ("--index-dir", "the index to write (dvc.yaml: ${corpus.index_dir})"),
                  ("--report", "the rich JSON report (its numbers go to --metrics)"))
    add_metrics_arg(ap)
    ap.add_argument("--eval-sample", type=int, default=None, help="recall@4 on a seeded sample of this many entities (default: corpus.eval_sample)")


def body(args, params):
    from medssr.knowledge import run_corpus
    from medssr.knowledge.stage import summary_line

    return summary_line(run_corpus(params, args.raw_dir, args.entities, args.index_dir, args.report, eval_sample=args.eval_sample))


def main(argv: list[str] | None = None) -> int:
    return run_stage("corpus", __doc__, add_args, body, argv, metrics=lambda a: {a.metrics: a.report})


if __name__ == "__main__":
    sys.exit(main())
