"""dvc.yaml as DVC runs it: its ``${...}`` resolved from params.yaml (DVC templating), for tests that run stage commands."""

from __future__ import annotations

import re
import shlex
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = re.compile(r"\$\{\s*([^}\s]+)\s*\}")


def template_keys(text: str) -> list[str]:
    """The params ``text`` uses as ``${key}``."""
    return TEMPLATE.findall(text)


def resolve(value: Any, params: dict) -> Any:
    """``value`` (a dvc.yaml node) with every ``${a.b}`` replaced by params ``a.b``, as ``dvc repro`` does."""
    if isinstance(value, str):
        def lookup(m: re.Match) -> str:
            node: Any = params
            for part in m.group(1).split("."):
                node = node[part]
            return str(node)
        return TEMPLATE.sub(lookup, value)
    if isinstance(value, list):
        return [resolve(v, params) for v in value]
    if isinstance(value, dict):
        return {resolve(k, params): resolve(v, params) for k, v in value.items()}
    return value


@cache
def raw_stages() -> dict[str, dict]:
    """dvc.yaml's stages as written (templates unresolved)."""
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@cache
def stages() -> dict[str, dict]:
    """dvc.yaml's stages with the shipped params.yaml's values in place of their ``${...}``."""
    return resolve(raw_stages(), yaml.safe_load((ROOT / "params.yaml").read_text()))


def cmd_args(stage: str) -> list[str]:
    """The arguments of ``stage``'s cmd after ``python stages/<script>.py``."""
    return shlex.split(stages()[stage]["cmd"])[2:]
