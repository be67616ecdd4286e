"""DVC stage `prepare`: real training rows, seeds, benchmarks, RareDis-Sub and E_rare (medssr.data.prepare)."""

from __future__ import annotations

import argparse
import sys

from medssr.config import ConfigError, load_params, set_offline_env


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
        print(summary_line(run_prepare(params, report_path=args.report)))
    except (ConfigError, RecordError, FileNotFoundError, ValueError) as e:
        print(f"prepare: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
