"""Question records: round trips, and malformed rows named by file, line and field."""

import json

import pytest

from medssr.records import (
    Question,
    RecordError,
    append_jsonl,
    quarantine_path_for,
    read_partial_jsonl,
    read_questions,
    write_jsonl,
)


def _q(i=1, **kw):
    d = {"id": f"q-{i}", "source": "medqa", "split": "test", "question": "A 4-year-old boy has drooling. Diagnosis?",
         "options": {"A": "Moebius syndrome", "B": "SMA", "C": "Worster-Drought syndrome", "D": "Opercular syndrome"}, "answer": "C"}
    d.update(kw)
    return d


def test_round_trip_keeps_every_field(tmp_path):
    q = Question(**_q(), rare_disease="Worster-Drought syndrome", category="Diagnosis", votes=["C", None, "A"], majority="C",
                 agreement=2 / 3, n_valid=2)
    write_jsonl(tmp_path / "q.jsonl", [q])
    (back,) = read_questions(tmp_path / "q.jsonl")
    assert back == q
    assert back.label == "C"
    assert back.render().endswith("D. Opercular syndrome")


def test_gzip_files_round_trip(tmp_path):
    write_jsonl(tmp_path / "q.jsonl.gz", [Question(**_q())])
    assert read_questions(tmp_path / "q.jsonl.gz")[0].id == "q-1"


@pytest.mark.parametrize(
    ("row", "field", "problem"),
    [
        (_q(answer="E"), "answer", "'E' is not among options A-D"),
        ({k: v for k, v in _q().items() if k != "options"}, "options", "missing"),
        (_q(options={"A": "x"}), "options", "at least 2"),
        (_q(options={"A": "x", "C": "y"}), "options", "keys must be A, B, C"),
        (_q(options={"A": "x", "B": " "}), "options.B", "non-empty"),
        (_q(id="bad id with spaces"), "id", "malformed id"),
        (_q(category="Genetics"), "category", "not one of"),
        (_q(colour="red"), "colour", "unknown field"),
        (_q(agreement=1.5), "agreement", "[0, 1]"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, row, field, problem):
    f = tmp_path / "q.jsonl"
    f.write_text(json.dumps(_q(1)) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(RecordError) as e:
        read_questions(f)
    assert str(e.value).startswith(f"{f}:2: {field}: ")
    assert problem in str(e.value)


def test_invalid_json_and_duplicate_ids(tmp_path):
    f = tmp_path / "q.jsonl"
    f.write_text(json.dumps(_q(1)) + "\n{not json\n")
    with pytest.raises(RecordError, match=r"q.jsonl:2: <row>: invalid JSON"):
        read_questions(f)
    f.write_text(json.dumps(_q(1)) + "\n" + json.dumps(_q(1)) + "\n")
    with pytest.raises(RecordError, match=r"q.jsonl:2: id: duplicate id 'q-1' \(first on line 1\)"):
        read_questions(f)


def test_non_utf8_bytes_name_the_line(tmp_path):
    f = tmp_path / "q.jsonl"
    f.write_bytes(json.dumps(_q(1)).encode() + b"\n" + b'{"id": "\xff\xfe"}\n')
    with pytest.raises(RecordError, match="not valid UTF-8"):
        read_questions(f)


def test_non_strict_mode_quarantines_and_counts(tmp_path):
    f = tmp_path / "q.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [_q(1), _q(2, answer="Z"), _q(3)]) + "\n")
    got = read_questions(f, strict=False)
    assert [q.id for q in got] == ["q-1", "q-3"]
    assert read_questions.last_rejected == 1
    side = (tmp_path / "q.jsonl.rejected.jsonl").read_text().splitlines()
    assert len(side) == 1 and json.loads(side[0])["line"] == 2


def test_progress_file_survives_a_torn_last_line(tmp_path):
    f = tmp_path / "p.jsonl"
    append_jsonl(f, {"id": "a"})
    append_jsonl(f, {"id": "b"})
    with open(f, "a") as fh:
        fh.write('{"id": "c", "vo')  # killed mid-write
    rows = read_partial_jsonl(f)
    assert [r["id"] for r in rows] == ["a", "b"]
    assert (rows.torn_tail, rows.quarantined) == (1, 0)  # normal after a kill: counted apart, not as damage
    append_jsonl(f, {"id": "c"})
    assert [r["id"] for r in read_partial_jsonl(f)] == ["a", "b", "c"]


def _progress_with(tmp_path, damaged: dict[int, str], n: int = 5):
    """A progress file of n rows whose line i (1-based) is replaced by damaged[i], newline kept."""
    f = tmp_path / "p.jsonl"
    lines = [damaged.get(i + 1, json.dumps({"key": f"k{i}"})) for i in range(n)]
    f.write_text("\n".join(lines) + "\n")
    return f


@pytest.mark.parametrize("lineno", [3, 5], ids=["middle", "last-with-newline"])
def test_damaged_progress_line_is_quarantined_and_the_file_rewritten_without_it(tmp_path, capsys, lineno):
    f = _progress_with(tmp_path, {lineno: '{"key": "k-torn", "vo'})
    rows = read_partial_jsonl(f)
    assert [r["key"] for r in rows] == [f"k{i}" for i in range(5) if i != lineno - 1]
    assert (rows.quarantined, rows.torn_tail, rows.side_file) == (1, 0, quarantine_path_for(f))
    side = [json.loads(x) for x in quarantine_path_for(f).read_text().splitlines()]
    assert [(b["line"], b["raw"]) for b in side] == [(lineno, '{"key": "k-torn", "vo')]
    assert side[0]["reason"].startswith("invalid JSON")
    err = capsys.readouterr().err
    assert "1 damaged progress line moved to" in err and str(quarantine_path_for(f)) in err
    # the next run (appending first, as a stage does) meets no damaged line and warns no more
    append_jsonl(f, {"key": "k9"})
    again = read_partial_jsonl(f)
    assert [r["key"] for r in again] == [r["key"] for r in rows] + ["k9"] and again.quarantined == 0
    assert capsys.readouterr().err == ""


def test_non_objects_and_bad_bytes_are_quarantined_too_and_counted(tmp_path):
    f = _progress_with(tmp_path, {1: "[1, 2]", 2: "null"})
    with open(f, "ab") as fh:
        fh.write(b'{"key": "\xff"}\n')
    rows = read_partial_jsonl(f)
    assert [r["key"] for r in rows] == ["k2", "k3", "k4"] and rows.quarantined == 3
    reasons = [json.loads(x)["reason"] for x in quarantine_path_for(f).read_text().splitlines()]
    assert reasons[:2] == ["expected a JSON object, got list", "expected a JSON object, got NoneType"]
    assert reasons[2].startswith("not valid UTF-8")
    assert "2 damaged progress lines" not in rows.note() and rows.note().startswith("3 damaged progress lines quarantined to ")


def test_quarantine_side_file_keeps_earlier_entries(tmp_path):
    f = _progress_with(tmp_path, {2: "{oops"})
    read_partial_jsonl(f)
    with open(f, "a") as fh:
        fh.write("{again\n")
    assert read_partial_jsonl(f).quarantined == 1
    assert [json.loads(x)["raw"] for x in quarantine_path_for(f).read_text().splitlines()] == ["{oops", "{again"]


def test_clean_progress_file_is_not_rewritten(tmp_path):
    f = _progress_with(tmp_path, {})
    before = f.stat().st_mtime_ns, f.stat().st_ino
    rows = read_partial_jsonl(f)
    assert len(rows) == 5 and rows.note() == "" and (f.stat().st_mtime_ns, f.stat().st_ino) == before
    assert not quarantine_path_for(f).exists()


def test_write_is_atomic(tmp_path):
    f = tmp_path / "q.jsonl"
    write_jsonl(f, [_q(1)])

    def boom():
        yield _q(2)
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_jsonl(f, boom())
    assert [json.loads(x)["id"] for x in f.read_text().splitlines()] == ["q-1"]


def test_non_strict_read_reads_past_a_bad_json_line_and_quarantines_only_it(tmp_path):
    lines = [json.dumps(_q(i)) for i in range(4)]
    lines[1] = '{"id": "broken'
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(lines) + "\n")
    got = read_questions(path, strict=False)
    assert [q.id for q in got] == ["q-0", "q-2", "q-3"]  # the rows after the bad line are not lost
    rejected = [json.loads(x) for x in (tmp_path / "q.jsonl.rejected.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejected] == [2] and "invalid JSON" in rejected[0]["error"]
    with pytest.raises(RecordError, match=r"q\.jsonl:2: <row>: invalid JSON"):
        read_questions(path)


def test_bad_bytes_cost_only_their_line_with_its_number(tmp_path):
    """Lines are decoded one by one: a non-UTF-8 line in the middle is that line's error, not the end of the read
    (and its number is its own, not where a text-mode decoder's chunk happened to stop)."""
    rows = [json.dumps(_q(i)).encode() for i in range(5)]
    rows[2] = b'{"id": "q-2", "question": "caf\xe9"}'
    path = tmp_path / "q.jsonl"
    path.write_bytes(b"\n".join(rows) + b"\n")
    got = read_questions(path, strict=False)
    assert [q.id for q in got] == ["q-0", "q-1", "q-3", "q-4"]
    rejected = [json.loads(x) for x in (tmp_path / "q.jsonl.rejected.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejected] == [3] and "UTF-8" in rejected[0]["error"]
    with pytest.raises(RecordError, match=r"q\.jsonl:3: .*UTF-8"):
        read_questions(path)
