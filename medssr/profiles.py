"""Parameter profiles: partial params files under params/ merged onto params.yaml, comments kept.

The embedded default is params.yaml itself; a profile only lists what it changes, so one command
(`medssr profile apply paper-qwen3-8b`) moves a checkout to paper scale and `git diff params.yaml` shows how.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medssr.config import ConfigError, params_from_raw


def profiles_dir() -> Path:
    from medssr.tracking import workspace_root

    return workspace_root() / "params"


def list_profiles() -> list[tuple[str, str]]:
    out = []
    for p in sorted(profiles_dir().glob("*.yaml")):
        first = p.read_text(encoding="utf-8").splitlines()[:1]
        out.append((p.stem, first[0].lstrip("# ") if first else ""))
    return out


def _merge(base: Any, over: Any, prefix: str, changed: list[str]) -> None:
    for k, v in over.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and isinstance(base.get(k), dict) and v:
            _merge(base[k], v, key + ".", changed)
        elif base.get(k) != v:
            base[k] = v
            changed.append(key)


def apply_profile(name: str, params_path: str | Path = "params.yaml") -> list[str]:
    """Merge ``params/<name>.yaml`` into ``params_path`` in place; the result is validated (whole, as any params file) before writing."""
    from ruamel.yaml import YAML

    src = Path(name) if name.endswith(".yaml") else profiles_dir() / f"{name}.yaml"
    if not src.exists():
        known = ", ".join(n for n, _ in list_profiles())
        raise ConfigError(f"profile {name!r}: no file {src} (known: {known})")
    yaml = YAML()
    yaml.preserve_quotes = True
    params_path = Path(params_path)
    base = yaml.load(params_path.read_text(encoding="utf-8"))
    over = yaml.load(src.read_text(encoding="utf-8")) or {}
    changed: list[str] = []
    _merge(base, over, "", changed)
    import json

    params_from_raw(json.loads(json.dumps(base)), f"{src} merged onto {params_path}")  # the check every params file gets
    with open(params_path, "w", encoding="utf-8") as fh:
        yaml.dump(base, fh)
    return changed
