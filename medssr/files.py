"""Atomic writes: a crash or a kill never leaves a half-written file or directory under its real name.

Every stage output, report, cache entry and checkpoint copy goes through here, so "written" always means
"complete": DVC, a resumed stage and a reader in another process see the old content or the new, never a mix.
JSONL rows have their own readers and writers in ``medssr.records`` (built on ``atomic_path``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; it replaces ``path`` only when the block ends cleanly.

    The temporary name carries the pid, so two processes writing the same file never share a half file.
    ``fsync``: flush the file to disk before the rename (progress files and caches that must survive power loss).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes, fsync: bool = False) -> Path:
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str, fsync: bool = False) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"), fsync=fsync)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2, sort_keys: bool = False,
                      ensure_ascii: bool = True, fsync: bool = False) -> Path:
    """``json.dumps(obj, indent=2)`` plus a final newline (``json``'s defaults otherwise, so bytes match earlier files)."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii)
    return write_text_atomic(path, text + "\n", fsync=fsync)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path``; when the block ends cleanly it becomes ``path``.

    An existing ``path`` is moved aside first and deleted only after the new one is in place, so a kill at any
    point leaves either the old directory or the new one under the real name (plus, at worst, a ``.old`` copy).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    old = path.with_name(f"{path.name}.{os.getpid()}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
