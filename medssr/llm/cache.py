"""Content-addressed on-disk cache of successful LLM responses: a rerun or a resumed run pays nothing twice.

One JSON file per entry under ``<dir>/<key[:2]>/<key>.json``, written to a temp file in the same directory
and renamed into place, so concurrent writers and a SIGKILL leave either the whole entry or none. No fsync by
default (it cost ~5 ms per entry here, inside the event loop): after an OS crash an entry may be lost or empty,
which reads as a miss and is simply generated again.

Every entry carries ``sha256``, the checksum of its key and content: an entry that was damaged or edited into
other valid JSON (or copied under another key) fails it and is a miss, never served. Entries without one
(written before checksums) are misses too: such an entry cannot be told apart from one whose checksum was
stripped by an edit, and the price is one re-request per old entry, once (the put that follows adds the checksum).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Literal

from medssr.files import write_text_atomic

log = logging.getLogger("medssr.llm")

KEY_VERSION = 1  # bump when the key recipe changes
CHECKSUM = "sha256"

Lookup = Literal["hit", "miss", "corrupt", "unverified"]


def request_key(fields: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of everything that determines a response."""
    blob = json.dumps({"v": KEY_VERSION, **fields}, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def entry_checksum(key: str, entry: dict[str, Any]) -> str:
    """sha256 over the key and the canonical JSON of the entry without its checksum field."""
    body = json.dumps({k: v for k, v in entry.items() if k != CHECKSUM}, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(f"{key}\n{body}".encode()).hexdigest()


class ResponseCache:
    """get/put of response dicts by key; unreadable, altered or unchecksummed entries are misses (overwritten on put)."""

    def __init__(self, cache_dir: str | os.PathLike, fsync: bool = False):
        self.dir = Path(cache_dir)
        self.fsync = fsync
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._stats = {"hits": 0, "misses": 0, "writes": 0, "corrupt": 0, "unverified": 0}

    def path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.json"

    def lookup(self, key: str) -> tuple[dict[str, Any] | None, Lookup]:
        """The verified entry (or None) and what was found: hit, miss, corrupt or unverified (no checksum)."""
        p = self.path(key)
        value: dict[str, Any] | None = None
        try:
            value = json.loads(p.read_text(encoding="utf-8"))
            if not isinstance(value, dict) or not isinstance(value.get("text"), str):
                raise ValueError("not a cache entry (no 'text' string)")
            if CHECKSUM not in value:
                status: Lookup = "unverified"
                log.warning("%s: cache entry has no checksum (older medssr); not served, asking again", p)
            elif value[CHECKSUM] != entry_checksum(key, value):
                raise ValueError(f"{CHECKSUM} does not match the content (altered or damaged)")
            else:
                status = "hit"
        except FileNotFoundError:
            status = "miss"
        except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            log.warning("%s: corrupt cache entry (%s); not served, asking again", p, e)
            status = "corrupt"
        with self._lock:
            self._stats["hits" if status == "hit" else "misses"] += 1
            if status in ("corrupt", "unverified"):
                self._stats[status] += 1
        return (value if status == "hit" else None), status

    def get(self, key: str) -> dict[str, Any] | None:
        return self.lookup(key)[0]

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Atomically write one entry (temp file + rename) with its checksum; ``created`` is added if missing."""
        entry = {k: v for k, v in value.items() if k != CHECKSUM}
        entry.setdefault("created", time.time())
        entry[CHECKSUM] = entry_checksum(key, entry)
        write_text_atomic(self.path(key), json.dumps(entry, ensure_ascii=False), fsync=self.fsync)
        with self._lock:
            self._stats["writes"] += 1

    def __contains__(self, key: str) -> bool:
        return self.path(key).exists()

    def stats(self) -> dict[str, int]:
        """Hits, misses (corrupt and unverified included), writes, corrupt and unverified entries seen by this object."""
        with self._lock:
            return dict(self._stats)

    def __len__(self) -> int:
        return sum(1 for _ in self.dir.glob("*/*.json"))
