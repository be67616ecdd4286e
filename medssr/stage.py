"""The shell every DVC stage script shares, so each script is only its arguments and one call into the library."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from medssr.config import load_params, set_offline_env
from medssr.errors import MedssrError


class EmptyOutputError(MedssrError):
    """A stage's main output came out empty. Its report, progress files and caches are already written, so a rerun
    after the fix pays for nothing twice; ``summary`` is the stage's usual line, printed before the error."""

    def __init__(self, message: str, summary: str | None = None):
        super().__init__(message)
        self.summary = summary


def fail_if_empty(count: int, allow: bool, allow_key: str, what: str, cause: str, change: str, summary: str | None = None) -> None:
    """Raise EmptyOutputError when ``count`` is 0 and ``allow_key`` (a params flag, false by default) does not allow it.

    One line: what came out empty, the likely cause (read from the stage's report) and which params to change.
    """
    if count == 0 and not allow:
        raise EmptyOutputError(f"{what} is empty: {cause}; change {change} (or set {allow_key}: true to let an empty result pass)",
                               summary)


def run_stage(name: str, doc: str | None, add_args: Callable[[argparse.ArgumentParser], None],
              body: Callable[[argparse.Namespace, object], str | None], argv: list[str] | None = None) -> int:
    """Parse `--params` plus the stage's own arguments, load params, run `body(args, params)` and print its summary line.

    A user error (MedssrError, a missing file) becomes `[name] error: ...` on stderr and exit code 1, not a traceback;
    nothing the stage already wrote is touched. An empty output (EmptyOutputError) is such an error too.
    """
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    add_args(ap)
    args = ap.parse_args(argv)
    set_offline_env()
    try:
        summary = body(args, load_params(args.params))
    except (MedssrError, FileNotFoundError) as e:
        if getattr(e, "summary", None):
            print(e.summary)
        print(f"[{name}] error: {e}", file=sys.stderr)
        return 1
    if summary:
        print(summary)
    return 0
