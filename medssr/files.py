"""Atomic writes: a crash or a kill never leaves a half-written file or directory under its real name.

Every stage output, report, cache entry and checkpoint copy goes through here, so "written" always means
"complete": DVC, a resumed stage and a reader in another process see the old content or the new, never a mix.
JSONL rows have their own readers and writers in ``medssr.records`` (built on ``atomic_path``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

_HOST = socket.gethostname().replace("/", "_")


def _unique() -> str:
    """``<pid>-<random>``: distinct for every call, across threads, processes and hosts sharing a folder."""
    return f"{os.getpid()}-{secrets.token_hex(4)}"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; it replaces ``path`` only when the block ends cleanly.

    The temporary name is unique per call, so two writers of the same file (threads or processes) never share
    a half file; the last to finish wins. ``fsync``: flush the file to disk before the rename (progress files,
    journals and caches that must survive power loss).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{_unique()}.tmp")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _remove_stale(path: Path) -> None:
    """Clear what a process on this host killed inside ``atomic_dir(path)`` left beside ``path``.

    Only names of our own form (``.<name>.<host>-<pid>-<random>.tmp|.old``) whose host is this one and whose
    pid is dead are touched, so another host's (or a live process's) build in a shared folder is left alone.
    A moved-aside ``.old`` (complete by construction) goes back under the real name when nothing is there.
    """
    ours = re.compile(rf"\.{re.escape(path.name)}\.{re.escape(_HOST)}-(\d+)-[0-9a-f]{{8}}\.(tmp|old)")
    for p in sorted(path.parent.iterdir()):
        m = ours.fullmatch(p.name)
        if not m or _pid_alive(int(m.group(1))):
            continue
        if m.group(2) == "old" and not path.exists():
            with contextlib.suppress(OSError):  # another process put it back first
                os.replace(p, path)
        else:
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, keep_existing: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path``; when the block ends cleanly it becomes ``path``.

    An existing ``path`` is moved aside first and deleted only after the new one is in place, so a kill leaves
    the old directory or the new one under the real name (a kill in the instant between the two renames leaves
    the old one moved aside: the next ``atomic_dir`` of ``path`` puts it back, and clears the hidden temporary
    copies killed processes left). ``keep_existing``: for caches whose content is the same whoever builds it;
    when it is true of the directory at ``path`` once ours is ready (another process finished first), theirs
    stays and ours is dropped.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    token = f"{_HOST}-{_unique()}"
    tmp = path.with_name(f".{path.name}.{token}.tmp")
    old = path.with_name(f".{path.name}.{token}.old")
    tmp.mkdir()
    try:
        yield tmp
        if keep_existing is not None and path.exists() and keep_existing(path):
            return
        if path.exists():
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except OSError:  # another writer put a non-empty directory there after we moved the old one aside
            if keep_existing is None or not keep_existing(path):
                raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
