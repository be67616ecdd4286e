"""The flags OpenRLHF 0.11.2's ``train_ppo_ray`` defines, read from its argparse source without importing it.

OpenRLHF does not import on a CPU machine (flash-attn, vLLM, Ray at module import), so the contract check of our
command reads ``openrlhf/cli/train_ppo_ray.py`` out of the wheel and walks its AST: every
``parser.add_argument("--a.b", ...)`` call, including the f-string flags added in ``for prefix in ("actor",
"critic")`` loops. ``hierarchize()`` only nests the parsed namespace; the flags themselves are literal dotted
strings. ``replica_parser()`` rebuilds an argparse parser from those calls (types, actions, choices, nargs) so a
test can parse our argv the way train_ppo_ray would.

Wheel lookup: ``$MEDSSR_OPENRLHF_WHEEL``, else ``.cache/openrlhf/openrlhf-0.11.2-*.whl``, else
``pip download --no-deps openrlhf==0.11.2 -d .cache/openrlhf`` (198 KB). ``python tests/openrlhf_flags.py`` lists them.
"""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VERSION = "0.11.2"
ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "openrlhf"
SOURCE_IN_WHEEL = "openrlhf/cli/train_ppo_ray.py"


class WheelUnavailable(RuntimeError):
    """The OpenRLHF wheel is neither given, cached, nor downloadable (tests skip with this message)."""


def find_wheel(download: bool = True, timeout: float = 120) -> Path:
    """Locate (or download into .cache/openrlhf) the openrlhf==0.11.2 wheel."""
    env = os.environ.get("MEDSSR_OPENRLHF_WHEEL")
    if env:
        p = Path(env)
        if not p.exists():
            raise WheelUnavailable(f"MEDSSR_OPENRLHF_WHEEL={env}: no such file")
        return p
    found = sorted(CACHE.glob(f"openrlhf-{VERSION}-*.whl"))
    if found:
        return found[-1]
    if not download:
        raise WheelUnavailable(f"no openrlhf-{VERSION} wheel in {CACHE} and downloading is off")
    CACHE.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", f"openrlhf=={VERSION}", "-d", str(CACHE)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise WheelUnavailable(f"`{' '.join(cmd)}` failed: {e}") from None
    found = sorted(CACHE.glob(f"openrlhf-{VERSION}-*.whl"))
    if out.returncode != 0 or not found:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        raise WheelUnavailable(f"`{' '.join(cmd)}` exited {out.returncode}: {tail[0]}")
    return found[-1]


def read_source(wheel: Path, path: str = SOURCE_IN_WHEEL) -> str:
    """A module's source from the wheel, ``train_ppo_ray.py`` by default (under ``openrlhf-<v>.data/purelib/`` in 0.11.2)."""
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n.endswith(path)]
        if not names:
            raise WheelUnavailable(f"{wheel}: has no {path}")
        return zf.read(names[0]).decode("utf-8")


def ray_init_env_keys(source: str) -> set[str]:
    """The env_vars keys of every ``ray.init(runtime_env={"env_vars": {...}})`` call in a module's source."""
    keys: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "init"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "ray"):
            continue
        for kw in node.keywords:
            if kw.arg == "runtime_env" and isinstance(kw.value, ast.Dict):
                for k, v in zip(kw.value.keys, kw.value.values, strict=True):
                    if isinstance(k, ast.Constant) and k.value == "env_vars" and isinstance(v, ast.Dict):
                        keys |= {e.value for e in v.keys if isinstance(e, ast.Constant)}
    return keys


def string_constants(source: str) -> set[str]:
    """Every string literal in a module (status keys such as ``"policy_loss"`` or ``"rollout/reward_mean"``)."""
    return {n.value for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


@dataclass
class FlagSpec:
    """One ``add_argument`` call: its option strings and the keyword arguments that decide what argv it accepts."""

    flags: list[str]
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def takes_value(self) -> bool:
        return self.kwargs.get("action") not in ("store_true", "store_false")


_TYPES = {"int": int, "float": float, "str": str}


def _eval_str(node: ast.AST, env: dict[str, str]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for v in node.values:
            if isinstance(v, ast.Constant):
                parts.append(str(v.value))
            elif isinstance(v, ast.FormattedValue) and isinstance(v.value, ast.Name) and v.value.id in env:
                parts.append(env[v.value.id])
            else:
                return None
        return "".join(parts)
    return None


def _eval_kw(node: ast.AST, env: dict[str, str]) -> Any:
    """Keyword values that matter to parsing: literals, int/float/str types, f-strings; anything else -> None."""
    if isinstance(node, ast.Name) and node.id in _TYPES:
        return _TYPES[node.id]
    s = _eval_str(node, env)
    if s is not None:
        return s
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        return None


def _walk(nodes: list[ast.stmt], env: dict[str, str], out: list[FlagSpec]) -> None:
    for node in nodes:
        if isinstance(node, ast.For) and isinstance(node.target, ast.Name) and isinstance(node.iter, (ast.Tuple, ast.List)):
            values = [_eval_str(e, env) for e in node.iter.elts]
            if all(v is not None for v in values):
                for v in values:
                    _walk(node.body, {**env, node.target.id: v}, out)
                continue
        for call in _calls(node):
            if isinstance(call.func, ast.Attribute) and call.func.attr == "add_argument":
                flags = [_eval_str(a, env) for a in call.args]
                if any(f is None for f in flags):
                    raise ValueError(f"line {call.lineno}: cannot resolve the option string of add_argument")
                kwargs = {k.arg: _eval_kw(k.value, env) for k in call.keywords if k.arg}
                out.append(FlagSpec([f for f in flags if f], kwargs))
        for child in ("body", "orelse", "finalbody"):
            if isinstance(node, (ast.If, ast.With, ast.Try, ast.FunctionDef)) and hasattr(node, child):
                _walk(getattr(node, child), env, out)


def _calls(stmt: ast.stmt) -> list[ast.Call]:
    """add_argument calls directly in this statement (not inside nested blocks, which _walk visits with their env)."""
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
        return [stmt.value]
    return []


def parse_specs(source: str) -> list[FlagSpec]:
    """Every add_argument call in the module, loops over literal tuples unrolled."""
    specs: list[FlagSpec] = []
    _walk(ast.parse(source).body, {}, specs)
    return specs


def defined_flags(specs: list[FlagSpec]) -> set[str]:
    return {f for s in specs for f in s.flags if f.startswith("--")}


def replica_parser(specs: list[FlagSpec]) -> argparse.ArgumentParser:
    """An argparse parser that accepts exactly what train_ppo_ray's parser accepts (defaults dropped)."""
    p = argparse.ArgumentParser(prog="train_ppo_ray", add_help=False, allow_abbrev=False, exit_on_error=False)
    keep = ("type", "action", "choices", "nargs", "dest")
    for s in specs:
        kw = {k: v for k, v in s.kwargs.items() if k in keep and v is not None}
        p.add_argument(*s.flags, **kw)
    return p


def load_specs(download: bool = True) -> list[FlagSpec]:
    return parse_specs(read_source(find_wheel(download=download)))


if __name__ == "__main__":
    specs = load_specs()
    for s in specs:
        print(" ".join(s.flags), "" if s.takes_value else "(switch)")
    print(f"{len(defined_flags(specs))} flags", file=sys.stderr)
