"""The shell every DVC stage script shares, so each script is only its arguments and one call into the library."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from medssr.config import load_params, set_offline_env
from medssr.errors import MedssrError
from medssr.files import write_json_atomic


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


def numeric_metrics(report: Any, prefix: str = "") -> dict[str, float]:
    """The numbers of a report, flattened to ``a.b.c`` keys: what `dvc metrics show/diff` and `dvc exp show` can compare.

    Strings (paths, hashes, examples, definitions), lists and non-finite values are left out; booleans become 0/1.
    """
    out: dict[str, float] = {}
    if isinstance(report, Mapping):
        for k, v in report.items():
            out.update(numeric_metrics(v, f"{prefix}{k}."))
    elif isinstance(report, bool):
        out[prefix[:-1]] = int(report)
    elif isinstance(report, (int, float)) and math.isfinite(report):
        out[prefix[:-1]] = report
    return out


def write_numeric_metrics(report_path: str | os.PathLike, metrics_path: str | os.PathLike) -> bool:
    """Project the rich JSON report at ``report_path`` to its numbers in ``metrics_path``; False when there is no report."""
    src = Path(report_path)
    if not src.is_file():
        return False
    numbers = numeric_metrics(json.loads(src.read_text(encoding="utf-8")))
    write_json_atomic(metrics_path, numbers, indent=1, sort_keys=True)
    return True


def add_path_args(ap: argparse.ArgumentParser, *specs: tuple[str, str]) -> None:
    """Required path options (``--name``, help): every file a stage reads or writes is named by its dvc.yaml cmd,
    the one place paths live, so a stage has no path defaults (argparse names a missing one)."""
    for flag, help_text in specs:
        ap.add_argument(flag, required=True, help=help_text)


def name_path(value: str) -> tuple[str, str]:
    """An argparse type for ``NAME=PATH`` arguments (``--checkpoint-dir stage1=checkpoints/stage1``) -> (name, path)."""
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {value!r}")
    return name, path


def add_metrics_arg(ap: argparse.ArgumentParser) -> None:
    """``--metrics``: the numbers-only DVC metric file of the stage's ``--report``."""
    add_path_args(ap, ("--metrics", "numbers of --report only, for dvc metrics/exp show"))


def declared_slice(params: Any, stage: str) -> Any:
    """What stage ``stage`` may read of ``params``: the keys its dvc.yaml entry declares (medssr.param_slice); the
    whole object where no dvc.yaml entry describes the stage (a stage script run by hand outside a DVC project)."""
    from medssr.param_slice import declared_params, params_slice
    from medssr.tracking import workspace_root

    declared = declared_params(workspace_root() / "dvc.yaml", stage)
    return params if declared is None else params_slice(params, stage, declared)


def run_stage(name: str, doc: str | None, add_args: Callable[[argparse.ArgumentParser], None],
              body: Callable[[argparse.Namespace, object], str | None], argv: list[str] | None = None, *,
              track: str | Callable[[argparse.Namespace], str | None] | None = None,
              metrics: Callable[[argparse.Namespace], Mapping[str, str]] | None = None) -> int:
    """Parse `--params` plus the stage's own arguments, load params, run `body(args, params)` and print its summary line.

    The stage's MLflow run (``track``: its name, or a function of the arguments giving it, None for no run; default
    ``name``) is open around the whole body, so its duration is the stage's; it ends FINISHED, or FAILED on an error.
    ``metrics`` maps numeric DVC metric files to the rich reports they are projected from after the body succeeds.
    A user error (MedssrError, a missing file) becomes `[name] error: ...` on stderr and exit code 1, not a traceback;
    nothing the stage already wrote is touched. An empty output (EmptyOutputError) is such an error too.
    """
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    add_args(ap)
    args = ap.parse_args(argv)
    set_offline_env()
    tracked = (track(args) if callable(track) else track or name)
    try:
        params = load_params(args.params)
        if tracked:
            from medssr.tracking import stage_scope

            with stage_scope(tracked, params):  # tracking gets every param (the run's params table, the parent's identity)
                summary = body(args, declared_slice(params, tracked))
        else:
            summary = body(args, params)
        for metrics_path, report_path in (metrics(args) if metrics else {}).items():
            write_numeric_metrics(report_path, metrics_path)
    except (MedssrError, FileNotFoundError) as e:
        if getattr(e, "summary", None):
            print(e.summary)
        print(f"[{name}] error: {e}", file=sys.stderr)
        return 1
    if summary:
        print(summary)
    return 0
