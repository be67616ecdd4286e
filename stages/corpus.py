"""DVC stage `corpus`: chunk the bundled retrieval text, embed it, write the chromadb/BM25 index, coverage and recall@4."""

from __future__ import annotations

import argparse
import sys

from medssr.config import load_params, set_offline_env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--entities", default="data/prepared/entities.jsonl", help="E_rare from the prepare stage")
    ap.add_argument("--report", default="reports/corpus.json")
    ap.add_argument("--eval-sample", type=int, default=None, help="recall@4 on a seeded sample of this many entities (default: all)")
    args = ap.parse_args(argv)
    set_offline_env()
    from medssr.knowledge import run_corpus
    from medssr.knowledge.stage import summary_line

    report = run_corpus(load_params(args.params), args.entities, args.report, eval_sample=args.eval_sample)
    print(summary_line(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
