"""Content-addressed on-disk cache of successful LLM responses: a rerun or a resumed run pays nothing twice.

One JSON file per entry under ``<dir>/<key[:2]>/<key>.json``, written to a temp file in the same directory
and renamed into place, so concurrent writers and a SIGKILL leave either the whole entry or none. No fsync by
default (it cost ~5 ms per entry here, inside the event loop): after an OS crash an entry may be lost or empty,
which reads as a miss and is simply generated again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("medssr.llm")

KEY_VERSION = 1  # bump when the key recipe or the entry format changes


def request_key(fields: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of everything that determines a response."""
    blob = json.dumps({"v": KEY_VERSION, **fields}, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """get/put of response dicts by key; unreadable entries count as misses (and are overwritten on put)."""

    def __init__(self, cache_dir: str | os.PathLike, fsync: bool = False):
        self.dir = Path(cache_dir)
        self.fsync = fsync
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._hits = self._misses = self._writes = self._corrupt = 0

    def path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        p = self.path(key)
        try:
            value = json.loads(p.read_text(encoding="utf-8"))
            if not isinstance(value, dict) or "text" not in value:
                raise ValueError("not a cache entry")
        except FileNotFoundError:
            value = None
        except (OSError, ValueError) as e:
            log.warning("%s: unreadable cache entry (%s); treating as a miss", p, e)
            with self._lock:
                self._corrupt += 1
            value = None
        with self._lock:
            if value is None:
                self._misses += 1
            else:
                self._hits += 1
        return value

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Atomically write one entry (temp file + rename); ``created`` is added if missing."""
        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps({**value, "created": value.get("created", time.time())}, ensure_ascii=False)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{key[:8]}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(data)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        with self._lock:
            self._writes += 1

    def __contains__(self, key: str) -> bool:
        return self.path(key).exists()

    def stats(self) -> dict[str, int]:
        """Hits, misses, writes and corrupt entries seen by this object (not the whole directory)."""
        with self._lock:
            return {"hits": self._hits, "misses": self._misses, "writes": self._writes, "corrupt": self._corrupt}

    def __len__(self) -> int:
        return sum(1 for _ in self.dir.glob("*/*.json"))
