"""`medssr validate FILE...`: check question files before a run spends time on them.

Two shapes are accepted: benchmark JSON lists (gz or plain, options rendered inside ``question``) and our
Question JSONL records. Every problem is reported as ``file:line: ...`` (for JSON lists also ``record N``,
the 1-based position in the list), with per-file counts of rows, options per question and answers.
"""

from __future__ import annotations

import gzip
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from medssr.data.loaders import load_benchmark_file
from medssr.records import Question, RecordError, iter_questions


@dataclass
class FileReport:
    path: str
    shape: str  # "benchmark-json" or "questions-jsonl"
    rows: int = 0
    options: Counter = field(default_factory=Counter)
    answers: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def add(self, q: Question) -> None:
        self.rows += 1
        self.options[len(q.options)] += 1
        self.answers[q.answer if q.answer is not None else "-"] += 1

    def lines(self, max_errors: int = 50) -> list[str]:
        opts = ", ".join(f"{n}:{c}" for n, c in sorted(self.options.items()))
        answers = " ".join(f"{a}{c}" for a, c in sorted(self.answers.items()))
        head = f"{self.path}: {self.shape}, {self.rows} valid rows, options per question {{{opts}}}, answers {answers or '-'}"
        out = [head + (f", {len(self.errors)} error(s)" if self.errors else ", ok")]
        out += [f"  {e}" for e in self.errors[:max_errors]]
        if len(self.errors) > max_errors:
            out.append(f"  ... {len(self.errors) - max_errors} more")
        return out


def detect_shape(path: Path) -> str:
    """'benchmark-json' when the file's first non-blank character opens a list, else 'questions-jsonl'."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        head = fh.read(4096).lstrip()
    return "benchmark-json" if head.startswith(b"[") else "questions-jsonl"


def _validate_benchmark(path: Path, rep: FileReport) -> None:
    rejected: list[dict] = []
    for q in load_benchmark_file(path, strict=False, rejected=rejected):
        rep.add(q)
    rep.errors += [r["error"] for r in rejected]


def _validate_jsonl(path: Path, rep: FileReport) -> None:
    for _, _, item in iter_questions(path):
        if isinstance(item, RecordError):
            rep.errors.append(str(item))
        else:
            rep.add(item)


def validate_file(path: str | Path) -> FileReport:
    """Check one file of either shape; problems land in ``report.errors`` instead of being raised."""
    path = Path(path)
    if not path.exists():
        rep = FileReport(str(path), "missing")
        rep.errors.append(f"{path}: no such file")
        return rep
    rep = FileReport(str(path), detect_shape(path))
    try:
        if rep.shape == "benchmark-json":
            _validate_benchmark(path, rep)
        else:
            _validate_jsonl(path, rep)
    except RecordError as e:  # the whole file is unreadable (bad JSON or bytes)
        rep.errors.append(str(e))
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
