"""A stage sees only the params its dvc.yaml entry declares.

DVC reruns a stage when a param it *declares* changes; a param a stage reads without declaring it can change and
leave the stage's outputs stale with `dvc status` clean. ``run_stage`` therefore hands each stage body a *watched*
copy of the params: reading a key the stage's ``params:`` list does not cover warns once per key, naming the key
and the stage (``MEDSSR_STRICT=1``, set by the test suite and CI, makes it an error: ``medssr.errors.contract_slip``). The tracking layer
(medssr.tracking, ``config.to_flat_dict``) copies every param into MLflow and is not a reader: it gets the whole
object. ``watched`` is also what tests/test_dvc_params.py records reads with, so the runtime guard and the test
agree on what a read is.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType
from typing import Any

from medssr.errors import MedssrError, contract_slip

TRACKING_ONLY = frozenset({"project.experiment"})  # where results are recorded, never what a stage writes
_NOT_READERS = ("dataclasses", "copy", "pathlib", "json", "gzip", "io", "codecs", __name__)

OnRead = Callable[[str, FrameType], None]


class UndeclaredParamError(MedssrError):
    """A stage read a param its dvc.yaml entry does not declare (DVC would not rerun it when that param changes)."""


def is_tracking_frame(frame: FrameType | None) -> bool:
    """Whether the read comes from copying params into MLflow (medssr.tracking or ``config.to_flat_dict``)."""
    from medssr.config import to_flat_dict

    while frame is not None:
        if frame.f_globals.get("__name__") == "medssr.tracking" or frame.f_code is to_flat_dict.__code__:
            return True
        frame = frame.f_back
    return False


def reader_of(frame: FrameType | None, skip: tuple[str, ...] = ()) -> str:
    """'module:function' of the first frame that is not the dataclass machinery, this module or a module in ``skip``."""
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module not in _NOT_READERS and module not in skip:
            return f"{module}:{frame.f_code.co_name}"
        frame = frame.f_back
    return "?"


_WATCHED: dict[type, type] = {}


def _watched_getattribute(self: Any, name: str) -> Any:
    value = object.__getattribute__(self, name)
    if name in type(self).__dataclass_fields__ and not dataclasses.is_dataclass(value):
        hook = object.__getattribute__(self, "__dict__").get("_medssr_on_read")
        if hook is not None:
            hook[0](hook[1] + name, sys._getframe(1))
    return value


def watched(obj: Any, on_read: OnRead, prefix: str = "") -> Any:
    """A copy of the params dataclass ``obj`` that calls ``on_read(dotted key, frame)`` on every leaf read.

    The copy is an instance of a subclass, so isinstance, ``dataclasses.asdict/replace`` and field access work as
    before; nested sections are watched copies too (a section read alone is not a read: its leaves are)."""
    cls = type(obj)
    sub = _WATCHED.setdefault(cls, type(f"Watched{cls.__name__}", (cls,), {"__getattribute__": _watched_getattribute}))
    new = object.__new__(sub)
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        object.__setattr__(new, f.name, watched(value, on_read, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else value)
    object.__setattr__(new, "_medssr_on_read", (on_read, prefix))
    return new


def covers(declared: Iterable[str], key: str) -> bool:
    """Whether a dvc.yaml ``params:`` list covers ``key`` (an entry names the key itself or a section above it)."""
    return any(key == d or key.startswith(d + ".") for d in declared)


def declared_params(dvc_yaml: str | os.PathLike, stage: str) -> list[str] | None:
    """The params ``stage`` declares in ``dvc_yaml``: its ``params:`` list and the ``${key}``s of its ``cmd`` (a change
    to those changes the command, and DVC reruns a stage whose command changed). None: no such file or stage, or an
    ``always_changed`` stage (it reruns every time, nothing it reads can go stale).

    Entries of another params file (``{file.yaml: [keys]}``) are not params.yaml keys and are skipped."""
    import yaml

    path = Path(dvc_yaml)
    if not path.is_file():
        return None
    entry = ((yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("stages") or {}).get(stage)
    if not isinstance(entry, dict) or entry.get("always_changed"):
        return None
    cmd = entry.get("cmd") or ""
    templated = re.findall(r"\$\{\s*([^}\s]+)\s*\}", " ".join(cmd) if isinstance(cmd, list) else str(cmd))
    return [p for p in entry.get("params") or [] if isinstance(p, str)] + templated


def params_slice(params: Any, stage: str, declared: Iterable[str], strict: bool | None = None) -> Any:
    """``params`` as stage ``stage`` may read them: an undeclared read warns once per key, or raises when ``strict``
    (default: ``MEDSSR_STRICT=1``)."""
    declared = tuple(declared)

    def check(key: str, frame: FrameType) -> None:
        if key in TRACKING_ONLY or covers(declared, key) or is_tracking_frame(frame):
            return
        message = (f"stage {stage!r} read param {key} ({reader_of(frame)}), which its dvc.yaml entry does not declare: "
                   f"add it to stages.{stage}.params, or DVC will not rerun {stage} when it changes")
        contract_slip(UndeclaredParamError(message), once=f"param {stage} {key}", strict_mode=strict, stacklevel=4)

    return watched(params, check)
