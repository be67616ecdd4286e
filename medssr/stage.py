"""The shell every DVC stage script shares, so each script is only its arguments and one call into the library."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from medssr.config import load_params, set_offline_env
from medssr.errors import MedssrError


def run_stage(name: str, doc: str | None, add_args: Callable[[argparse.ArgumentParser], None],
              body: Callable[[argparse.Namespace, object], str | None], argv: list[str] | None = None) -> int:
    """Parse `--params` plus the stage's own arguments, load params, run `body(args, params)` and print its summary line.

    A user error (MedssrError, a missing file) becomes `[name] error: ...` on stderr and exit code 1, not a traceback;
    nothing the stage already wrote is touched.
    """
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    add_args(ap)
    args = ap.parse_args(argv)
    set_offline_env()
    try:
        summary = body(args, load_params(args.params))
    except (MedssrError, FileNotFoundError) as e:
        print(f"[{name}] error: {e}", file=sys.stderr)
        return 1
    if summary:
        print(summary)
    return 0
