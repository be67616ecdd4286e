"""Loaders for the benchmark and training files, all returning Question records.

Benchmarks are data, not code: params ``data.benchmarks`` declares each one (name -> file, display name), and
``load_benchmark_file`` reads any JSON list in the MedSSR test format (``id``, ``question`` with the options
rendered as ``\\nA. ...`` lines, ``gold``; 2-10 options A-J), gzipped or plain, so a new benchmark needs a file
and a params entry, not new Python. Training sets are data too: params ``data.train`` declares each one (name ->
path, format) and ``load_train_source`` reads it in the layout people have it (MedQA JSONL, MedMCQA official or
Hugging Face, ReDis-QA, any table through a column mapping; parquet, JSON(L) or a ``datasets`` directory)."""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from medssr.config import TRAIN_FORMATS, ConfigError, TrainColumnsCfg, TrainSourceCfg, bundled_train_sources
from medssr.records import CATEGORIES, ID_RE, LETTERS, Question, RecordError, iter_jsonl, validate_question

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
# training sources, declared in params ``data.train`` (name -> TrainSourceCfg: path, format, split, columns,
# max_rows). Every loader returns every row, with meta["known_test"] set where the source itself marks the row as
# part of a MedSSR test set; leakage.remove_leakage drops those (and text/id matches) and counts them.
#
# Ids: a row keeps its dataset's own id where the MedSSR benchmarks use the same one (``medmcqa-<id>``,
# ``pubmedqa-<pmid>``, ``bioasq-<id>``), so id leakage works whatever the entry is called; otherwise the id is
# ``<entry>-<split>-<record>`` (MedQA, ReDis-QA, tables without an id column) or ``<entry>-<id column>``.


class TrainRecordError(BenchmarkRecordError):
    """A bad row of a declared training (or extra RareDis) file: ``path:LINE: record N: field: problem``."""


class _Bad(Exception):
    """A row-level problem: the field and what is wrong with it (turned into a TrainRecordError with the row's place)."""

    def __init__(self, field_name: str, problem: str):
        super().__init__(field_name, problem)
        self.field, self.problem = field_name, problem


def _train_question(d: dict, path: Path, record: int, rejected: list[dict] | None, strict: bool) -> Question | None:
    try:
        return validate_question(d, path, record)
    except RecordError as e:
        _reject(e, strict, rejected)
        return None


_SPLIT_WORDS = {"train": "train", "dev": "dev", "validation": "validation", "valid": "validation", "val": "validation",
                "test": "test"}


def split_from_name(path: str | os.PathLike, default: str = "train") -> str:
    """The split a file's name says (``dev.json.gz`` -> dev, ``phrases_no_exclude_train.jsonl`` -> train), else ``default``."""
    for word in re.split(r"[^a-z]+", Path(path).name.lower()):
        if word in _SPLIT_WORDS:
            return _SPLIT_WORDS[word]
    return default


def _first_char(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            while chunk := fh.read(4096):
                if chunk.strip():
                    return chr(chunk.lstrip()[0])
    except (OSError, EOFError) as e:
        raise RecordError(path, None, "<file>", f"cannot read ({e})") from None
    return ""


Rows = Iterator[tuple[int, int | None, Any]]  # (record number, line or None, row)


def _json_rows(path: Path) -> Rows:
    if _first_char(path) == "[":
        yield from iter_json_list(path)
    else:  # JSON lines (MedMCQA's official .json files, `datasets` to_json output)
        for record, (line, row) in enumerate(iter_jsonl(path), 1):
            yield record, line, row


def _arrow_rows(batches: Iterator[Any]) -> Rows:
    record = 0
    for batch in batches:
        for row in batch.to_pylist():
            record += 1
            yield record, None, row


def open_table(path: Path, split: str | None = None, key: str = "path") -> tuple[list[str] | None, Rows]:
    """A file or `datasets` directory as (its column names, or None when only the rows tell, and its rows).

    A directory must be written by ``datasets.save_to_disk`` (a DatasetDict needs ``split`` unless it holds one);
    files are .parquet, .jsonl or .json (a JSON list or JSON lines), gz or plain. Nothing is downloaded.
    """
    if path.is_dir():
        if not ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
            found = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.suffix in (".parquet", ".jsonl", ".json", ".gz"))[:5]
            hint = f"; point {key} at one of its files ({', '.join(found)})" if found else ""
            raise ConfigError(f"{key}: {path} is a directory but not a `datasets.save_to_disk` one (no dataset_dict.json "
                              f"or state.json){hint}")
        from datasets import DatasetDict, load_from_disk

        ds = load_from_disk(str(path))
        if isinstance(ds, DatasetDict):
            if split is None and len(ds) == 1:
                split = next(iter(ds))
            if split not in ds:
                raise ConfigError(f"{key}: {path} holds the splits {', '.join(ds)}; name one as `split:`"
                                  + (f" ({split!r} is not one of them)" if split else ""))
            ds = ds[split]
        return list(ds.column_names), _arrow_rows(ds.with_format("arrow").iter(batch_size=4096))  # honours a select()'s indices
    if not path.exists():
        raise FileNotFoundError(f"{key}: {path}: no such file or directory")
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except Exception as e:  # pyarrow raises its own ArrowInvalid for a damaged file
            raise RecordError(path, None, "<file>", f"not a readable parquet file ({e})") from None
        return list(pf.schema_arrow.names), _arrow_rows(pf.iter_batches(batch_size=4096))
    if name.endswith((".jsonl", ".json")):
        return None, _json_rows(path)
    raise ConfigError(f"{key}: {path}: unsupported file type (use .jsonl, .json, .parquet, gz or plain, or a directory "
                      "written by datasets.save_to_disk)")


def _text(row: dict, col: str, what: str | None = None) -> str:
    v = row.get(col)
    if v is None:
        raise _Bad(what or col, "missing")
    if not isinstance(v, str):
        raise _Bad(what or col, f"expected a string, got {type(v).__name__}")
    return v.strip()


def _option_text(v: Any) -> str:
    return v.strip() if isinstance(v, str) else ("" if v is None else str(v).strip())


def _index(v: Any, base: int, n: int, col: str) -> str:
    """A 0- or 1-based answer index (an int, or digits in a string) -> its letter."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise _Bad(col, "missing" if v is None else f"expected an answer index, got {v!r}")
    try:
        i = int(v)
    except ValueError:
        raise _Bad(col, f"{v!r} is not an answer index ({base}-{base + n - 1}, {base} = A)") from None
    if i != v and str(i) != str(v).strip():
        raise _Bad(col, f"{v!r} is not an answer index ({base}-{base + n - 1}, {base} = A)")
    if not base <= i < base + n:
        raise _Bad(col, f"{v!r} is not an answer index ({base}-{base + n - 1}, {base} = A)")
    return LETTERS[i - base]


class _Ctx:
    def __init__(self, name: str, split: str, label: str, cols: TrainColumnsCfg | None):
        self.name, self.split, self.label, self.cols = name, split, label, cols
        self.split_token = re.sub(r"[^A-Za-z0-9._-]", "_", split)
        self.record = 0

    def own_id(self) -> str:
        return f"{self.name}-{self.split_token}-{self.record}"


def _row_medqa(r: dict, c: _Ctx) -> dict:
    question = _text(r, "question")
    opts = r.get("options")
    if not isinstance(opts, dict) or not opts:
        raise _Bad("options", "missing" if opts is None else "expected a mapping {A: ..., B: ...}")
    options = {k: _option_text(opts[k]) for k in sorted(opts)}
    ans = r.get("answer_idx")
    if ans is None:
        raise _Bad("answer_idx", "missing")
    ans = str(ans).strip()
    if ans not in options:
        raise _Bad("answer_idx", f"{ans!r} is not among options {', '.join(options)}")
    text = r.get("answer")
    if isinstance(text, str) and text.strip() and text.strip() != options[ans]:
        raise _Bad("answer", f"{text.strip()!r} is not the text of option {ans} ({options[ans]!r})")
    return {"id": c.own_id(), "question": question, "options": options, "answer": ans,
            "meta": {"orig_split": c.split, "meta_info": r.get("meta_info")}}


def _row_medmcqa(r: dict, c: _Ctx, base: int) -> dict:
    rid = r.get("id")
    return {"id": f"medmcqa-{rid}" if isinstance(rid, str) and rid.strip() else c.own_id(),
            "question": _text(r, "question"), "options": {k: _option_text(r.get(f"op{k.lower()}")) for k in "ABCD"},
            "answer": _index(r.get("cop"), base, 4, "cop"),
            "meta": {"orig_split": c.split, "choice_type": r.get("choice_type"), "subject": r.get("subject_name"),
                     "topic": r.get("topic_name")}}


_CATEGORY_WORDS = {"".join(ch for ch in c.lower() if ch.isalpha()): c for c in CATEGORIES} | {"other": "Others"}


def _row_redisqa(r: dict, c: _Ctx) -> dict:
    d = {"id": c.own_id(), "question": _text(r, "question"),
         "options": {k: _option_text(r.get(f"op{k.lower()}")) for k in "ABCD"}, "answer": _index(r.get("cop"), 0, 4, "cop"),
         "meta": {"orig_split": c.split}}
    disease = r.get("rare disease", r.get("topic"))
    if isinstance(disease, list):
        disease = next((x for x in disease if isinstance(x, str) and x.strip()), None)
    if isinstance(disease, str) and disease.strip():
        d["rare_disease"] = disease.strip()
    prop = r.get("category", r.get("property"))
    if isinstance(prop, str) and prop.strip():
        d["meta"]["property"] = prop.strip()
        category = _CATEGORY_WORDS.get("".join(ch for ch in prop.lower() if ch.isalpha()))
        if category:
            d["category"] = category
    return d


def _row_columns(r: dict, c: _Ctx) -> dict:
    cols = c.cols
    assert cols is not None
    if isinstance(cols.options, list):
        options = {LETTERS[i]: _option_text(r.get(col)) for i, col in enumerate(cols.options)}
    else:
        v = r.get(cols.options)
        if isinstance(v, dict):
            options = {str(k).strip(): _option_text(v[k]) for k in sorted(v, key=lambda k: str(k).strip())}
        elif isinstance(v, list):
            if len(v) > len(LETTERS):
                raise _Bad(cols.options, f"{len(v)} options; at most {len(LETTERS)} (A-J)")
            options = {LETTERS[i]: _option_text(x) for i, x in enumerate(v)}
        else:
            raise _Bad(cols.options, "missing" if v is None else "expected a list of options or a mapping {A: ..., B: ...}")
    v = r.get(cols.answer)
    if cols.answer_is == "letter":
        if not isinstance(v, str) or not v.strip():
            raise _Bad(cols.answer, "missing" if v is None else f"expected an option letter, got {v!r}")
        answer = v.strip()
        if answer not in options:
            raise _Bad(cols.answer, f"{answer!r} is not among options {', '.join(options) or '(none)'}")
    elif cols.answer_is == "text":
        if not isinstance(v, str) or not v.strip():
            raise _Bad(cols.answer, "missing" if v is None else f"expected the answer's text, got {v!r}")
        hits = [k for k, t in options.items() if t == v.strip()]
        if len(hits) != 1:
            raise _Bad(cols.answer, f"{v.strip()!r} is the text of {'no option' if not hits else 'several options'}")
        answer = hits[0]
    else:
        answer = _index(v, 0 if cols.answer_is == "index0" else 1, len(options), cols.answer)
    rid = r.get(cols.id) if cols.id else None
    if cols.id and (rid is None or str(rid).strip() == ""):
        raise _Bad(cols.id, "missing")
    return {"id": f"{c.name}-{str(rid).strip()}" if cols.id else c.own_id(), "question": _text(r, cols.question),
            "options": options, "answer": answer, "meta": {"orig_split": c.split}}


# the columns each layout reads: checked against a file's columns (or its first row) before any row is mapped
_REQUIRED = {"medqa": ("question", "options", "answer_idx"), "medmcqa": ("question", "opa", "opb", "opc", "opd", "cop"),
             "medmcqa_hf": ("question", "opa", "opb", "opc", "opd", "cop"),
             "redisqa": ("question", "opa", "opb", "opc", "opd", "cop")}
_ROW = {"medqa": _row_medqa, "medmcqa": lambda r, c: _row_medmcqa(r, c, 1), "medmcqa_hf": lambda r, c: _row_medmcqa(r, c, 0),
        "redisqa": _row_redisqa, "columns": _row_columns}


def _check_columns(decl: TrainSourceCfg, columns: list[str], path: Path, key: str, first_row: bool) -> None:
    """A declared column the file lacks is a params error naming the key, the file and the columns it has."""
    where = f"{path} (its {'first row has' if first_row else 'columns are'}: {', '.join(columns) or 'none'})"
    if decl.format == "columns":
        cols = decl.columns
        assert cols is not None
        wanted = [("question", cols.question), ("answer", cols.answer)]
        wanted += [("options", o) for o in (cols.options if isinstance(cols.options, list) else [cols.options])]
        wanted += [("id", cols.id)] if cols.id else []
        for field_name, col in wanted:
            if col not in columns:
                raise ConfigError(f"{key}.columns.{field_name}: unknown column {col!r}: not in {where}")
        return
    for col in _REQUIRED[decl.format]:
        if col not in columns:
            raise ConfigError(f"{key}.format: {decl.format} rows have a {col!r} column; {where}. Is this file in another "
                              "format (format: columns maps any column names)?")


def _load_table(name: str, decl: TrainSourceCfg, path: Path, strict: bool, rejected: list[dict] | None, key: str,
                label: str) -> list[Question]:
    """Rows of a table-shaped source (MedQA, MedMCQA, ReDis-QA, generic columns) as Questions."""
    columns, rows = open_table(path, decl.split, f"{key}.path")
    split = decl.split or split_from_name(path, "test" if label == "test" else "train")
    c = _Ctx(name, split, label, decl.columns)
    to_dict = _ROW[decl.format]
    out: list[Question] = []
    for record, line, row in rows:
        if decl.max_rows is not None and record > decl.max_rows:
            break
        if record == 1:
            _check_columns(decl, columns if columns is not None else list(row) if isinstance(row, dict) else [], path, key,
                           columns is None)
        c.record = record
        where = (record, line) if line is None or line != record else (None, line)  # JSON lines: the line says it all
        try:
            if not isinstance(row, dict):
                raise _Bad("<record>", f"expected an object, got {type(row).__name__}")
            d = to_dict(row, c)
            d.update(source=name, split=label)
            q = validate_question(d)
        except _Bad as e:
            _reject(TrainRecordError(path, where[0], e.field, e.problem, where[1]), strict, rejected)
            continue
        except RecordError as e:
            _reject(TrainRecordError(path, where[0], e.field, e.problem, where[1]), strict, rejected)
            continue
        out.append(q)
    return out


def _headqa_files(path: Path) -> list[Path]:
    if not path.is_dir():
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file")
        return [path]
    files = [p for split in ("train", "dev", "test") for p in sorted(path.glob(f"{split}_HEAD*.json*"))]
    if not files:
        raise FileNotFoundError(f"{path}: no HEAD-QA file ({{train,dev,test}}_HEAD_EN.json[.gz]) in this directory")
    return files


def _load_headqa(name: str, path: Path, strict: bool, rejected: list[dict] | None) -> list[Question]:
    """HEAD-QA exams: ``ra`` is the aid of the right answer; items with an image are dropped."""
    out = []
    for file in _headqa_files(path):
        orig_split = file.name.split("_")[0]
        data = _read_json(file)
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
                d = {"id": f"{name}-{exam_name}-{item.get('qid')}", "source": name, "split": "train",
                     "question": (item.get("qtext") or "").strip(),
                     "options": {LETTERS[i]: (a.get("atext") or "").strip() for i, a in enumerate(answers)}, "answer": answer,
                     "meta": {"orig_split": orig_split, "exam": exam_name, "category": exam.get("category"), "year": exam.get("year")}}
                q = _train_question(d, file, record, rejected, strict)
                if q is not None:
                    out.append(q)
    return out


def _load_pubmedqa(name: str, path: Path, strict: bool, rejected: list[dict] | None) -> list[Question]:
    """PubMedQA PQA-L, context-free like the MedSSR benchmark (QUESTION only); official test PMIDs flagged known_test.

    The official test PMIDs come from ``test_ground_truth.json[.gz]`` beside the file, when it is there.
    """
    data = _read_json(path)
    gt = [p for p in (path.with_name("test_ground_truth.json.gz"), path.with_name("test_ground_truth.json")) if p.exists()]
    test_ids = set(_read_json(gt[0])) if gt else set()
    inverse = {v: k for k, v in YES_NO_MAYBE.items()}
    out = []
    for record, (pmid, r) in enumerate(data.items(), 1):
        decision = str(r.get("final_decision", "")).strip().lower()
        d = {"id": f"pubmedqa-{pmid}", "source": name, "split": "train", "question": (r.get("QUESTION") or "").strip(),
             "options": dict(YES_NO_MAYBE), "answer": inverse.get(decision, decision or None),
             "meta": {"orig_split": "test" if pmid in test_ids else "train", "pmid": pmid, "year": r.get("YEAR"),
                      "known_test": pmid in test_ids}}
        q = _train_question(d, path, record, rejected, strict)
        if q is not None:
            out.append(q)
    return out


def _load_bioasq(name: str, path: Path, strict: bool, rejected: list[dict] | None) -> list[Question]:
    """BioASQ golden yes/no questions; rows flagged ``in_medssr_test_short_bioasq`` are marked known_test."""
    inverse = {v: k for k, v in YES_NO.items()}
    out = []
    for lineno, r in iter_jsonl(path):
        answer = str(r.get("answer", "")).strip().lower()
        d = {"id": f"bioasq-{r.get('id')}", "source": name, "split": "train", "question": (r.get("question") or "").strip(),
             "options": dict(YES_NO), "answer": inverse.get(answer, answer or None),
             "meta": {"orig_split": "golden", "source_file": r.get("source_file"),
                      "known_test": bool(r.get("in_medssr_test_short_bioasq"))}}
        q = _train_question(d, path, lineno, rejected, strict)
        if q is not None:
            out.append(q)
    return out


_FILE_LOADERS: dict[str, Callable[[str, Path, bool, list[dict] | None], list[Question]]] = {
    "headqa": _load_headqa, "pubmedqa_pqal": _load_pubmedqa, "bioasq_yesno": _load_bioasq}


def source_path(decl: TrainSourceCfg, raw_dir: str | os.PathLike) -> Path:
    """Where a declared source lives: ``path`` under ``raw_dir``, or as given when absolute."""
    p = Path(decl.path).expanduser()
    return p if p.is_absolute() else Path(raw_dir) / p


def load_train_source(name: str, decl: TrainSourceCfg, raw_dir: str | os.PathLike, strict: bool = True,
                      rejected: list[dict] | None = None, key: str | None = None, label: str = "train") -> list[Question]:
    """Every row of one declared training set (params ``data.train.<name>``) as Questions with source ``name``.

    ``key`` names the declaration in errors (default ``data.train.<name>``); ``label`` is the rows' split ("test" for
    an extra RareDis file). A missing file raises FileNotFoundError naming the key, a column the file lacks a
    ConfigError naming it, a bad row a TrainRecordError naming file, line or record, and field (strict mode).
    """
    key = key or f"data.train.{name}"
    path = source_path(decl, raw_dir)
    if not path.exists():
        raise FileNotFoundError(f"{key}.path: {path}: no such file or directory")
    if decl.format in _FILE_LOADERS:
        rows = _FILE_LOADERS[decl.format](name, path, strict, rejected)
        return rows[: decl.max_rows] if decl.max_rows is not None else rows
    if decl.format not in _ROW:
        raise ConfigError(f"{key}.format: unknown format {decl.format!r}; one of {', '.join(TRAIN_FORMATS)}")
    return _load_table(name, decl, path, strict, rejected, key, label)


BUNDLED_TRAIN = bundled_train_sources()
TRAINING_SOURCES = tuple(BUNDLED_TRAIN)  # the bundled sets under data/raw/train (params.yaml declares them in data.train)


def load_training_source(name: str, raw_dir: str | os.PathLike, strict: bool = True, rejected: list[dict] | None = None,
                         drop_known_test: bool = False) -> list[Question]:
    """All rows of one bundled training set; ``drop_known_test`` removes rows the source marks as MedSSR test items.

    The prepare stage keeps them (``drop_known_test=False``) so leakage removal can count them per source.
    """
    if name not in BUNDLED_TRAIN:
        raise KeyError(f"unknown training source {name!r}; bundled: {', '.join(BUNDLED_TRAIN)} (others are declared in data.train)")
    rows = load_train_source(name, BUNDLED_TRAIN[name], raw_dir, strict=strict, rejected=rejected)
    if drop_known_test:
        rows = [q for q in rows if not q.meta.get("known_test")]
    return rows


def load_medmcqa(raw_dir: str | os.PathLike, strict: bool = True, rejected: list[dict] | None = None) -> list[Question]:
    """The bundled MedMCQA dev (official JSON lines): ``cop`` is 1-based (1 = A); ``choice_type`` kept in meta."""
    return load_training_source("medmcqa", raw_dir, strict, rejected)


def load_headqa(raw_dir: str | os.PathLike, strict: bool = True, rejected: list[dict] | None = None) -> list[Question]:
    """The bundled HEAD-QA English train/dev/test."""
    return load_training_source("headqa", raw_dir, strict, rejected)


def load_pubmedqa(raw_dir: str | os.PathLike, strict: bool = True, rejected: list[dict] | None = None) -> list[Question]:
    """The bundled PubMedQA PQA-L."""
    return load_training_source("pubmedqa", raw_dir, strict, rejected)


def load_bioasq(raw_dir: str | os.PathLike, strict: bool = True, rejected: list[dict] | None = None) -> list[Question]:
    """The bundled BioASQ 7b-11b golden yes/no questions."""
    return load_training_source("bioasq", raw_dir, strict, rejected)
