"""`medssr validate FILE...`: check question files before a run spends time on them.

Two shapes are accepted: benchmark JSON lists (gz or plain, options rendered inside ``question``) and our
Question JSONL records. Every problem is reported as ``file:line: ...`` (for JSON lists also ``record N``,
the 1-based position in the list), with per-file counts of rows, options per question and answers. A JSONL
file is read to its end whatever its lines hold; a JSON list cannot be parsed past a syntax error, and says so.
"""

from __future__ import annotations

import gzip
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from medssr.data.loaders import iter_benchmark_questions
from medssr.records import Question, RecordError, iter_questions


@dataclass
class FileReport:
    path: str
    shape: str  # "benchmark-json" or "questions-jsonl"
    rows: int = 0
    options: Counter = field(default_factory=Counter)
    answers: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    unread_from: int | None = None  # a JSON list with a syntax error: the line past which nothing was read

    def add(self, q: Question) -> None:
        self.rows += 1
        self.options[len(q.options)] += 1
        self.answers[q.answer if q.answer is not None else "-"] += 1

    def lines(self, max_errors: int = 50) -> list[str]:
        opts = ", ".join(f"{n}:{c}" for n, c in sorted(self.options.items()))
        answers = " ".join(f"{a}{c}" for a, c in sorted(self.answers.items()))
        rows = f"{self.rows} valid rows" + (f" before line {self.unread_from} (the rest cannot be parsed)" if self.unread_from else "")
        head = f"{self.path}: {self.shape}, {rows}, options per question {{{opts}}}, answers {answers or '-'}"
        out = [head + (f", {len(self.errors)} error(s)" if self.errors else ", ok")]
        out += [f"  {e}" for e in self.errors[:max_errors]]
        if len(self.errors) > max_errors:
            out.append(f"  ... and {len(self.errors) - max_errors} more error(s) not shown")
        return out


def detect_shape(path: Path) -> str:
    """'benchmark-json' when the file's first non-blank character opens a list, else 'questions-jsonl'."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        head = fh.read(4096).lstrip()
    return "benchmark-json" if head.startswith(b"[") else "questions-jsonl"


def validate_file(path: str | Path) -> FileReport:
    """Check one file of either shape; problems land in ``report.errors`` instead of being raised."""
    path = Path(path)
    if not path.exists():
        rep = FileReport(str(path), "missing")
        rep.errors.append(f"{path}: no such file")
        return rep
    rep = FileReport(str(path), detect_shape(path))
    if rep.shape == "benchmark-json":
        items = iter_benchmark_questions(path)
    else:  # records' own row check: a bad line (bad bytes included) costs only itself
        items = (item for _, _, item in iter_questions(path))
    try:
        for item in items:
            if isinstance(item, RecordError):
                rep.errors.append(str(item))
            else:
                rep.add(item)
    except RecordError as e:  # a JSON list that cannot be parsed past this point (bad JSON or bytes)
        rep.errors.append(str(e))
        rep.unread_from = e.line
    if rep.rows == 0 and not rep.errors:
        rep.errors.append(f"{path}: no records")
    return rep


def validate_files(paths: list[str] | list[Path]) -> tuple[bool, str]:
    """Validate every file; returns (all ok, the printable report)."""
    reports = [validate_file(p) for p in paths]
    lines = [line for r in reports for line in r.lines()]
    bad = sum(bool(r.errors) for r in reports)
    lines.append(f"validate: {len(reports)} file(s), {sum(r.rows for r in reports)} valid rows, "
                 + (f"{bad} file(s) with errors" if bad else "all ok"))
    return bad == 0, "\n".join(lines)


def main_validate(paths: list[str]) -> int:
    """CLI entry: print the report, exit status 0 when every file is valid, 1 otherwise."""
    if not paths:
        print("validate: give one or more question files (benchmark .json[.gz] or Question .jsonl[.gz])", file=sys.stderr)
        return 1
    ok, report = validate_files(paths)
    print(report)
    return 0 if ok else 1
