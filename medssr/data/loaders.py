"""Loaders for the real benchmark and training files under data/raw, all returning Question records.

Benchmarks are data, not code: params ``data.benchmarks`` declares each one (name -> file, display name), and
``load_benchmark_file`` reads any JSON list in the MedSSR test format (``id``, ``question`` with the options
rendered as ``\\nA. ...`` lines, ``gold``; 2-10 options A-J), gzipped or plain, so a new benchmark needs a file
and a params entry, not new Python.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from medssr.config import ConfigError
from medssr.records import ID_RE, LETTERS, Question, RecordError, iter_jsonl, validate_question

TRAINING_FILES: dict[str, list[str]] = {
    "medmcqa": ["train/medmcqa/dev.json.gz"],
    "headqa": ["train/headqa_en/train_HEAD_EN.json.gz", "train/headqa_en/dev_HEAD_EN.json.gz", "train/headqa_en/test_HEAD_EN.json.gz"],
    "pubmedqa": ["train/pubmedqa/ori_pqal.json.gz", "train/pubmedqa/test_ground_truth.json.gz"],
    "bioasq": ["train/bioasq/bioasq_7b-11b_golden_yesno.jsonl.gz"],
}

YES_NO_MAYBE = {"A": "yes", "B": "no", "C": "maybe"}
YES_NO = {"A": "yes", "B": "no"}

# "A. text", "A) text" or "(A) text" at the start of a line
_OPTION_LINE = re.compile(r"^\s*\(?([A-J])[.)]\s+(.*)$")
# benchmark meta worth keeping (Medbullets carries MedSSR's own reasoning annotations)
_KEEP_META = ("long", "is_reasoning", "reasoning_prob")


class BenchmarkRecordError(RecordError):
    """A bad record in a benchmark JSON list: ``path:LINE: record N: field: problem`` (LINE where the record starts)."""

    def __init__(self, path: str | os.PathLike | None, record: int | None, field_name: str, problem: str, line: int | None = None):
        super().__init__(path, line, field_name, problem)
        self.record = record
        where = (f"{self.path}:{line}: " if line else f"{self.path}: ") if self.path else ""
        where += f"record {record}: " if record else ""
        self.args = (f"{where}{field_name}: {problem}",)

    def __str__(self) -> str:
        return self.args[0]


def _reject(err: RecordError, strict: bool, rejected: list[dict] | None) -> None:
    """Raise in strict mode; otherwise record the problem for the quarantine count."""
    if strict:
        raise err
    if rejected is not None:
        rejected.append({"file": str(err.path), "record": getattr(err, "record", err.line), "line": err.line, "error": str(err)})


def split_options(text: str) -> tuple[str, dict[str, str]]:
    """Split a rendered question into (stem, {"A": ..., ...}); raises ValueError if no A, B, ... block ends it.

    The option block is the last run of lines starting ``A.``, ``B.``, ... in order; a line that starts no
    new option continues the one before it, and stray quote-only lines (38 MedQA rows end in ``\\n"``) are dropped.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").rstrip().split("\n")
    starts = [i for i, line in enumerate(lines) if (m := _OPTION_LINE.match(line)) and m.group(1) == "A"]
    for a in reversed(starts):
        options: dict[str, list[str]] = {}
        ok = True
        for line in lines[a:]:
            m = _OPTION_LINE.match(line)
            nxt = LETTERS[len(options)] if len(options) < len(LETTERS) else None
            if m and m.group(1) == nxt:
                options[nxt] = [m.group(2)]
            elif m and m.group(1) in options:  # e.g. a second "A." after "A.", "B.": not one block
                ok = False
                break
            elif line.strip().strip("\"'“”") == "":
                continue
            else:
                options[LETTERS[len(options) - 1]].append(line)
        if ok and len(options) >= 2:
            stem = "\n".join(lines[:a]).strip()
            if not stem:
                raise ValueError("no question text before the options")
            return stem, {k: "\n".join(v).strip() for k, v in options.items()}
    raise ValueError("no option block ('A. ...', 'B. ...' lines) at the end of the question")


def _read_text(path: Path) -> str:
    """A gz or plain file as UTF-8 text; bad bytes raise a RecordError naming the line."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as e:
        raise RecordError(path, None, "<file>", f"cannot read ({e})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise RecordError(path, line, "<file>", f"not valid UTF-8 (byte offset {e.start})") from None


def _json_error(path: Path, e: json.JSONDecodeError) -> RecordError:
    return RecordError(path, e.lineno, "<file>", f"invalid JSON ({e.msg} at column {e.colno})")


def _read_json(path: Path) -> Any:
    """Decode a gz or plain JSON file, turning decode errors into RecordErrors that name the file and line."""
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _json_error(path, e) from None


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def iter_json_list(path: str | os.PathLike) -> Iterator[tuple[int, int, Any]]:
    """Yield ``(record_index, start_line, object)`` for each element of a JSON list file, so errors can name lines."""
    path = Path(path)
    text = _read_text(path)
    decoder = json.JSONDecoder()
    try:
        i = _skip_ws(text, 0)
        if not text.startswith("[", i):
            obj = json.loads(text)  # valid JSON that is not a list, or a decode error with its position
            raise RecordError(path, None, "<file>", f"expected a JSON list of records, got {type(obj).__name__}")
        i = _skip_ws(text, i + 1)
        line, pos, record = 1, 0, 0
        if text.startswith("]", i):
            i += 1
        else:
            while True:
                obj, end = decoder.raw_decode(text, i)
                record += 1
                line += text.count("\n", pos, i)
                pos = i
                yield record, line, obj
                i = _skip_ws(text, end)
                if text.startswith(",", i):
                    i = _skip_ws(text, i + 1)
                elif text.startswith("]", i):
                    i += 1
                    break
                else:
                    raise json.JSONDecodeError("Expecting ',' delimiter", text, i)
        if _skip_ws(text, i) != len(text):
            raise json.JSONDecodeError("Extra data", text, _skip_ws(text, i))
    except json.JSONDecodeError as e:
        raise _json_error(path, e) from None


def benchmark_row_to_question(row: Any, name: str, path: str | os.PathLike | None = None, record: int | None = None,
                              line: int | None = None) -> Question:
    """One benchmark JSON object -> Question (stem and options split, gold checked); raises BenchmarkRecordError."""

    def fail(field_name: str, problem: str) -> BenchmarkRecordError:
        return BenchmarkRecordError(path, record, field_name, problem, line)

    if not isinstance(row, dict):
        raise fail("<record>", f"expected a JSON object, got {type(row).__name__}")
    rid = row.get("id")
    if not isinstance(rid, str) or not ID_RE.match(rid):
        raise fail("id", "missing" if rid is None else f"malformed id {rid!r} (letters, digits, ._:/+- ; max 200)")
    text = row.get("question")
    if not isinstance(text, str) or not text.strip():
        raise fail("question", "missing" if text is None else "expected a non-empty string")
    try:
        stem, options = split_options(text)
    except ValueError as e:
        raise fail("question", str(e)) from None
    gold = row.get("gold", row.get("answer"))
    if gold is None:
        raise fail("gold", "missing")
    gold = str(gold).strip()
    if gold not in options:
        keys = list(options)
        raise fail("gold", f"{gold!r} is not among options {keys[0]}-{keys[-1]}")
    meta = {k: row[k] for k in _KEEP_META if k in row}
    if row.get("name") and row["name"] != name:
        meta["name"] = row["name"]
    d = {"id": rid, "source": name, "split": "test", "question": stem, "options": options, "answer": gold, "meta": meta}
    # optional annotations a rare-disease benchmark file (e.g. a local ReDis-QA copy) may carry
    if isinstance(row.get("rare_disease"), str) and row["rare_disease"].strip():
        d["rare_disease"] = row["rare_disease"].strip()
    if row.get("category") is not None:
        d["category"] = row["category"]
    try:
        return validate_question(d)
    except RecordError as e:
        raise fail(e.field, e.problem) from None


def benchmark_name_for(path: str | os.PathLike) -> str:
    """Name a benchmark file: ``test_short_medqa.json.gz`` -> ``medqa``."""
    stem = Path(path).name
    for suffix in (".gz", ".json", ".jsonl"):
        stem = stem.removesuffix(suffix)
    return stem.removeprefix("test_short_").removeprefix("test_")


def load_benchmark_file(path: str | os.PathLike, name: str | None = None, strict: bool = True,
                        rejected: list[dict] | None = None) -> list[Question]:
    """Read any benchmark JSON list (gz or plain; 2-10 options) into Questions.

    ``strict=False`` skips bad records and appends ``{"file", "record", "error"}`` to ``rejected`` instead of raising.
    """
    out: list[Question] = []
    for item in iter_benchmark_questions(path, name):
        if isinstance(item, RecordError):
            _reject(item, strict, rejected)
        else:
            out.append(item)
    return out


def iter_benchmark_questions(path: str | os.PathLike, name: str | None = None) -> Iterator[Question | RecordError]:
    """Each record of a benchmark JSON list as a Question, or the RecordError naming its line (duplicate ids included).

    A syntax error that stops the parse is raised, not yielded: nothing past it can be read.
    """
    path = Path(path)
    name = name or benchmark_name_for(path)
    seen: dict[str, int] = {}
    for record, line, row in iter_json_list(path):
        try:
            q = benchmark_row_to_question(row, name, path, record, line)
            if q.id in seen:
                raise BenchmarkRecordError(path, record, "id", f"duplicate id {q.id!r} (first at record {seen[q.id]})", line)
        except RecordError as e:
            yield e
            continue
        seen[q.id] = record
        yield q


def load_benchmarks(declared: Mapping[str, Any], raw_dir: str | os.PathLike, names: list[str] | None = None, strict: bool = True,
                    rejected: list[dict] | None = None) -> dict[str, list[Question]]:
    """Every declared benchmark (params ``data.benchmarks``: name -> declaration with ``file`` under ``raw_dir``), in declaration order.

    ``names`` picks some of them; a missing file raises FileNotFoundError naming the params key.
    """
    if not declared:
        raise ConfigError("data.benchmarks is empty: declare each benchmark as `name: {file: benchmarks/<file>.json.gz, display: ...}`")
    unknown = [n for n in names or [] if n not in declared]
    if unknown:
        raise ConfigError(f"unknown benchmark {unknown[0]!r}; declared in data.benchmarks: {', '.join(declared)}")
    out: dict[str, list[Question]] = {}
    for name in names or list(declared):
        path = Path(raw_dir) / declared[name].file
        if not path.exists():
            raise FileNotFoundError(f"data.benchmarks.{name}.file: {path}: no such file")
        out[name] = load_benchmark_file(path, name, strict, rejected)
    return out


# ---------------------------------------------------------------------------------------------------
# training sources: each returns every row with meta["known_test"] set where the source itself marks the
# row as part of a MedSSR test set; leakage.remove_leakage drops those (and text/id matches) and counts them.


def _train_question(d: dict, path: Path, record: int, rejected: list[dict] | None, strict: bool) -> Question | None:
    try:
        return validate_question(d, path, record)
    except RecordError as e:
        _reject(e, strict, rejected)
        return None


def load_medmcqa(raw_dir: str | os.PathLike, strict: bool = True, rejected: list[dict] | None = None) -> list[Question]:
    """MedMCQA dev (JSONL): ``cop`` is 1-based (1 = A); ``choice_type`` kept in meta."""
    path = Path(raw_dir) / TRAINING_FILES["medmcqa"][0]
    out = []
    for lineno, r in iter_jsonl(path):
        try:
            cop = int(r["cop"])
            d = {"id": f"medmcqa-{r['id']}", "source": "medmcqa", "split": "train", "question": (r.get("question") or "").strip(),
                 "options": {k: (r.get(f"op{k.lower()}") or "").strip() for k in "ABCD"},
                 "answer": LETTERS[cop - 1] if 1 <= cop <= 4 else f"cop={cop}",
                 "meta": {"orig_split": "dev", "choice_type": r.get("choice_type"), "subject": r.get("subject_name"),
                          "topic": r.get("topic_name")}}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            _reject(RecordError(path, lineno, "cop" if "cop" in str(e) else "<row>", f"unreadable row ({e!r})"), strict, rejected)
            continue
        q = _train_question(d, path, lineno, rejected, strict)
        if q is not None:
            out.append(q)
    return out


def load_headqa(raw_dir: str | os.PathLike, strict: bool = True, rejected: list[dict] | None = None) -> list[Question]:
    """HEAD-QA English train/dev/test: ``ra`` is the aid of the right answer; items with an image are dropped."""
    out = []
    for rel in TRAINING_FILES["headqa"]:
        path = Path(raw_dir) / rel
        orig_split = path.name.split("_")[0]
        data = _read_json(path)
        record = 0
        for exam_name, exam in data["exams"].items():
            for item in exam["data"]:
                record += 1
                if item.get("image"):
                    continue
                answers = item.get("answers") or []
                aids = [str(a.get("aid")) for a in answers]
                ra = str(item.get("ra"))
                answer = LETTERS[aids.index(ra)] if ra in aids else f"ra={ra}"
                d = {"id": f"headqa-{exam_name}-{item.get('qid')}", "source": "headqa", "split": "train",
                     "question": (item.get("qtext") or "").strip(),
                     "options": {LETTERS[i]: (a.get("atext") or "").strip() for i, a in enumerate(answers)}, "answer": answer,
                     "meta": {"orig_split": orig_split, "exam": exam_name, "category": exam.get("category"), "year": exam.get("year")}}
                q = _train_question(d, path, record, rejected, strict)
                if q is not None:
                    out.append(q)
    return out


def load_pubmedqa(raw_dir: str | os.PathLike, strict: bool = True, rejected: list[dict] | None = None) -> list[Question]:
    """PubMedQA PQA-L, context-free like the MedSSR benchmark (QUESTION only); official test PMIDs flagged known_test."""
    path, gt_path = (Path(raw_dir) / p for p in TRAINING_FILES["pubmedqa"])
    data, test_ids = _read_json(path), set(_read_json(gt_path))
    inverse = {v: k for k, v in YES_NO_MAYBE.items()}
    out = []
    for record, (pmid, r) in enumerate(data.items(), 1):
        decision = str(r.get("final_decision", "")).strip().lower()
        d = {"id": f"pubmedqa-{pmid}", "source": "pubmedqa", "split": "train", "question": (r.get("QUESTION") or "").strip(),
             "options": dict(YES_NO_MAYBE), "answer": inverse.get(decision, decision or None),
             "meta": {"orig_split": "test" if pmid in test_ids else "train", "pmid": pmid, "year": r.get("YEAR"),
                      "known_test": pmid in test_ids}}
        q = _train_question(d, path, record, rejected, strict)
        if q is not None:
            out.append(q)
    return out


def load_bioasq(raw_dir: str | os.PathLike, strict: bool = True, rejected: list[dict] | None = None) -> list[Question]:
    """BioASQ 7b-11b golden yes/no questions; rows flagged ``in_medssr_test_short_bioasq`` are marked known_test."""
    path = Path(raw_dir) / TRAINING_FILES["bioasq"][0]
    inverse = {v: k for k, v in YES_NO.items()}
    out = []
    for lineno, r in iter_jsonl(path):
        answer = str(r.get("answer", "")).strip().lower()
        d = {"id": f"bioasq-{r.get('id')}", "source": "bioasq", "split": "train", "question": (r.get("question") or "").strip(),
             "options": dict(YES_NO), "answer": inverse.get(answer, answer or None),
             "meta": {"orig_split": "golden", "source_file": r.get("source_file"),
                      "known_test": bool(r.get("in_medssr_test_short_bioasq"))}}
        q = _train_question(d, path, lineno, rejected, strict)
        if q is not None:
            out.append(q)
    return out


TRAINING_SOURCES: dict[str, Callable[..., list[Question]]] = {
    "medmcqa": load_medmcqa,
    "headqa": load_headqa,
    "pubmedqa": load_pubmedqa,
    "bioasq": load_bioasq,
}


def load_training_source(name: str, raw_dir: str | os.PathLike, strict: bool = True, rejected: list[dict] | None = None,
                         drop_known_test: bool = False) -> list[Question]:
    """All rows of one training source; ``drop_known_test`` removes rows the source marks as MedSSR test items.

    The prepare stage keeps them (``drop_known_test=False``) so leakage removal can count them per source.
    """
    if name not in TRAINING_SOURCES:
        raise KeyError(f"unknown training source {name!r}; known: {', '.join(TRAINING_SOURCES)}")
    rows = TRAINING_SOURCES[name](raw_dir, strict=strict, rejected=rejected)
    if drop_known_test:
        rows = [q for q in rows if not q.meta.get("known_test")]
    return rows
