"""Question records and their JSONL files: the one shape every stage reads and writes.

A row that can't be parsed raises ``RecordError`` naming file, line and field; with
``strict=False`` it goes to a ``<file>.rejected.jsonl`` side file and is counted instead. Progress files (the
append-only caches of resumable stages) never stop a run: damaged lines go to ``<file>.quarantine.jsonl``.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from medssr.errors import MedssrError
from medssr.files import atomic_path

LETTERS = "ABCDEFGHIJ"
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/+-]{0,199}$")

CATEGORIES = ("Symptoms", "Causes", "Affects", "Related disorders", "Diagnosis", "Treatment", "Others")


class RecordError(MedssrError, ValueError):
    """A malformed record; the message reads ``file:line: field: problem``."""

    def __init__(self, path: str | os.PathLike | None, line: int | None, field_name: str, problem: str):
        self.path, self.line, self.field, self.problem = str(path) if path else None, line, field_name, problem
        where = f"{self.path}:{line}: " if self.path and line else (f"{self.path}: " if self.path else "")
        super().__init__(f"{where}{field_name}: {problem}")


@dataclass
class Question:
    """A multiple-choice question, real or synthetic (DESIGN.md 'Records')."""

    id: str
    source: str
    split: str
    question: str
    options: dict[str, str]
    answer: str | None = None
    rare_disease: str | None = None
    category: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # synthetic
    seed_ids: list[str] | None = None
    retrieved: list[str] | None = None
    generator: str | None = None
    prompt_hash: str | None = None
    usage: dict[str, int] | None = None
    # labeled
    votes: list[str | None] | None = None
    majority: str | None = None
    agreement: float | None = None
    n_valid: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict without the optional fields that are unset, so files stay small."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}  # shallow: asdict deep-copies every row
        optional = {"seed_ids", "retrieved", "generator", "prompt_hash", "usage", "votes", "majority", "agreement", "n_valid"}
        return {k: v for k, v in d.items() if not (k in optional and v is None)}

    @property
    def label(self) -> str | None:
        """The reward target: the majority vote of a labeled synthetic question, else the gold answer."""
        return self.majority if self.majority is not None else self.answer

    def render(self) -> str:
        """Stem followed by ``A. option`` lines: the layout of the benchmark files and our prompts."""
        return self.question.rstrip() + "\n" + "\n".join(f"{k}. {v}" for k, v in self.options.items())


FIELD_NAMES = {f.name for f in fields(Question)}


def validate_question(d: Any, path: str | os.PathLike | None = None, line: int | None = None) -> Question:
    """Build a Question from a decoded JSON object, or raise RecordError naming the bad field."""
    if not isinstance(d, dict):
        raise RecordError(path, line, "<row>", f"expected a JSON object, got {type(d).__name__}")
    unknown = sorted(set(d) - FIELD_NAMES)
    if unknown:
        raise RecordError(path, line, unknown[0], "unknown field")
    for name in ("id", "source", "split", "question", "options"):
        if name not in d:
            raise RecordError(path, line, name, "missing")
    if not isinstance(d["id"], str) or not ID_RE.match(d["id"]):
        raise RecordError(path, line, "id", f"malformed id {d['id']!r} (letters, digits, ._:/+- ; max 200)")
    for name in ("source", "split", "question"):
        if not isinstance(d[name], str) or not d[name].strip():
            raise RecordError(path, line, name, "expected a non-empty string")
    opts = d["options"]
    if not isinstance(opts, dict) or len(opts) < 2:
        raise RecordError(path, line, "options", "expected an object with at least 2 options")
    keys = list(opts)
    if keys != list(LETTERS[: len(keys)]):
        raise RecordError(path, line, "options", f"option keys must be A, B, C... in order, got {keys}")
    for k, v in opts.items():
        if not isinstance(v, str) or not v.strip():
            raise RecordError(path, line, f"options.{k}", "expected a non-empty string")
    for name in ("answer", "majority"):
        v = d.get(name)
        if v is not None and v not in opts:
            raise RecordError(path, line, name, f"{v!r} is not among options {keys[0]}-{keys[-1]}")
    if d.get("category") is not None and d["category"] not in CATEGORIES:
        raise RecordError(path, line, "category", f"{d['category']!r} is not one of {', '.join(CATEGORIES)}")
    if "meta" in d and not isinstance(d["meta"], dict):
        raise RecordError(path, line, "meta", "expected an object")
    if d.get("votes") is not None:
        if not isinstance(d["votes"], list) or any(v is not None and v not in opts for v in d["votes"]):
            raise RecordError(path, line, "votes", "expected a list of option letters or null")
    if d.get("agreement") is not None and not (isinstance(d["agreement"], (int, float)) and 0 <= d["agreement"] <= 1):
        raise RecordError(path, line, "agreement", "expected a number in [0, 1]")
    return Question(**d)


def _open_text(path: Path, mode: str, gz: bool | None = None):
    if path.suffix == ".gz" if gz is None else gz:
        return gzip.open(path, mode + "t", encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def _decode_line(raw: bytes) -> tuple[Any, str | None]:
    """A JSONL line's object, or None and why it is damaged (the problem part of a RecordError)."""
    try:  # without its line end, so a line cut short is reported at its last column, not on a "line 2"
        return json.loads(raw.rstrip(b"\r\n").decode("utf-8")), None
    except UnicodeDecodeError as e:
        return None, f"not valid UTF-8 ({e.reason} at byte {e.start} of the line)"
    except json.JSONDecodeError as e:
        return None, f"invalid JSON ({e.msg} at column {e.colno})"


def iter_jsonl_rows(path: str | os.PathLike) -> Iterator[tuple[int, Any | RecordError]]:
    """Yield ``(line_number, object or the RecordError of that line)`` for each non-empty line of a (gzipped) JSONL
    file, reading on past a bad line: each line is decoded on its own, so bad JSON or bad bytes cost only their line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            obj, problem = _decode_line(raw)
            yield lineno, obj if problem is None else RecordError(path, lineno, "<row>", problem)


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, object)`` for each non-empty line; the first bad JSON line or bad bytes raise, naming it."""
    for lineno, obj in iter_jsonl_rows(path):
        if isinstance(obj, RecordError):
            raise obj
        yield lineno, obj


def iter_questions(path: str | os.PathLike) -> Iterator[tuple[int, Any, Question | RecordError]]:
    """Yield ``(line, raw object, Question or the RecordError for that row)``; the one row-checking loop that
    `read_questions` and `medssr validate` share (duplicate ids included)."""
    path = Path(path)
    seen: dict[str, int] = {}
    for lineno, obj in iter_jsonl_rows(path):
        if isinstance(obj, RecordError):
            yield lineno, None, obj
            continue
        try:
            q = validate_question(obj, path, lineno)
            if q.id in seen:
                raise RecordError(path, lineno, "id", f"duplicate id {q.id!r} (first on line {seen[q.id]})")
        except RecordError as e:
            yield lineno, obj, e
            continue
        seen[q.id] = lineno
        yield lineno, obj, q


def read_questions(path: str | os.PathLike, strict: bool = True) -> list[Question]:
    """Read a Question JSONL file; non-strict mode quarantines bad rows to ``<path>.rejected.jsonl``."""
    out, rejected = [], []
    path = Path(path)
    for lineno, obj, item in iter_questions(path):
        if isinstance(item, Question):
            out.append(item)
        elif strict:
            raise item
        else:
            rejected.append({"line": lineno, "error": str(item)} | ({"row": obj} if obj is not None else {}))
    if rejected:
        write_jsonl(path.with_name(path.name + ".rejected.jsonl"), rejected)
    read_questions.last_rejected = len(rejected)  # type: ignore[attr-defined]
    return out


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> int:
    """Write rows (Questions or dicts) atomically: a crash never leaves a half file under the real name."""
    path = Path(path)
    n = 0
    with atomic_path(path) as tmp, _open_text(tmp, "w", gz=path.suffix == ".gz") as fh:
        for r in rows:
            d = r.to_dict() if isinstance(r, Question) else r
            fh.write(json.dumps(d, ensure_ascii=False) + "\n")
            n += 1
    return n


def append_jsonl(path: str | os.PathLike, row: Any) -> None:
    """Append one row and flush it to disk: the unit of progress for resumable stages."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    d = row.to_dict() if isinstance(row, Question) else row
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(d, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


class ProgressRows(list):
    """The rows of a progress file (a list, so callers iterate it as before) and what reading it set aside.

    ``quarantined``: damaged lines (invalid JSON or UTF-8, not an object) anywhere in the file; ``torn_tail``: 1 when
    the last line was cut by a kill mid-write, which is normal and so counted apart; ``side_file``: where both went.
    """

    quarantined: int = 0
    torn_tail: int = 0
    side_file: Path | None = None

    def note(self) -> str:
        """The clause a stage's summary adds, e.g. '2 damaged progress lines quarantined to <side file>', or ''."""
        parts = [f"{self.quarantined} damaged progress line{'s' if self.quarantined != 1 else ''} quarantined"] if self.quarantined else []
        parts += ["a torn last line set aside"] if self.torn_tail else []
        return f"{' and '.join(parts)} to {self.side_file}" if parts else ""


def quarantine_path_for(path: str | os.PathLike) -> Path:
    """The side file beside a progress file that keeps its damaged lines (line number, reason, raw text)."""
    path = Path(path)
    return path.with_name(path.name + ".quarantine.jsonl")


def _progress_line(raw: bytes) -> tuple[Any, str | None]:
    """A progress line's object, or None and why it is damaged."""
    obj, reason = _decode_line(raw)
    if reason is None and not isinstance(obj, dict):
        return None, f"expected a JSON object, got {type(obj).__name__}"
    return obj, reason


def read_partial_jsonl(path: str | os.PathLike) -> ProgressRows:
    """Rows of an append-only progress file; damaged lines are moved to ``quarantine_path_for(path)``, not fatal.

    A progress file is a cache of finished units: a line lost to a kill, a full disk or an editor costs only that
    unit, which the stage redoes. The file is rewritten atomically without the damaged lines, so the next run (and
    the appends after this read) never meet them again; one warning names the count and the side file.
    """
    path = Path(path)
    out = ProgressRows()
    if not path.exists():
        return out
    lines = path.read_bytes().split(b"\n")
    keep: list[bytes] = []
    bad: list[dict[str, Any]] = []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        obj, reason = _progress_line(raw)
        if reason is None:
            out.append(obj)
            keep.append(raw)
        elif i == len(lines) - 1:  # no newline after it: a kill mid-write
            out.torn_tail += 1
            bad.append({"line": i + 1, "reason": f"torn last line, no newline (a kill mid-write): {reason}",
                        "raw": raw.decode("utf-8", "backslashreplace")})
        else:
            out.quarantined += 1
            bad.append({"line": i + 1, "reason": reason, "raw": raw.decode("utf-8", "backslashreplace")})
    if not bad and not lines[-1].strip():
        return out
    if bad:
        out.side_file = quarantine_path_for(path)
        with open(out.side_file, "a", encoding="utf-8") as fh:
            fh.writelines(json.dumps(b, ensure_ascii=False) + "\n" for b in bad)
            fh.flush()
            os.fsync(fh.fileno())
    # rewrite without them (and with a final newline), so later appends start on a clean line
    with atomic_path(path, fsync=True) as tmp, open(tmp, "wb") as fh:
        fh.writelines(raw + b"\n" for raw in keep)
    if out.quarantined:
        where = "; ".join(f"line {b['line']}: {b['reason']}" for b in bad[:3]) + ("; ..." if len(bad) > 3 else "")
        print(f"warning: {path}: {out.quarantined} damaged progress line{'s' if out.quarantined != 1 else ''} moved to "
              f"{out.side_file} ({where}); their units are redone", file=sys.stderr)
    elif out.torn_tail:
        print(f"note: {path}: the last line was cut by a kill mid-write; set aside in {out.side_file}, that unit is redone",
              file=sys.stderr)
    return out
