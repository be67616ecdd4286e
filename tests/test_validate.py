"""`medssr validate` accepts the real benchmark files and names file, line and field for every problem."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from medssr.config import load_params
from medssr.data.loaders import load_training_source
from medssr.data.validate import main_validate, validate_file, validate_files
from medssr.records import write_jsonl

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "data" / "raw"
DECLARED = load_params(ROOT / "params.yaml").data.benchmarks


def medqa_rows() -> list[dict]:
    return json.load(gzip.open(RAW / DECLARED["medqa"].file))


def test_every_benchmark_file_is_accepted():
    ok, report = validate_files([RAW / d.file for d in DECLARED.values()])
    assert ok, report
    assert len(DECLARED) == 9
    assert "test_short_medxpertqa.json.gz: benchmark-json, 2450 valid rows, options per question {10:2450}" in report
    assert "test_short_nejm.json.gz: benchmark-json, 603 valid rows, options per question {5:603}" in report
    assert "test_short_medbullets.json.gz: benchmark-json, 308 valid rows, options per question {5:308}" in report
    assert "answers A570 B212, ok" in report  # bioasq


@pytest.fixture
def corrupted(tmp_path) -> Path:
    rows = medqa_rows()[:50]
    rows[16]["gold"] = "E"
    del rows[20]["gold"]
    rows[30]["question"] = "A question whose options were lost"
    rows[40]["id"] = rows[39]["id"]
    path = tmp_path / "medqa_corrupted.json"
    path.write_text(json.dumps(rows, indent=4), encoding="utf-8")
    return path


def test_corrupted_copy_is_rejected_with_file_line_record_field(corrupted):
    rep = validate_file(corrupted)
    assert rep.rows == 46
    p = str(corrupted)
    assert rep.errors == [
        f"{p}:114: record 17: gold: 'E' is not among options A-D",
        f"{p}:142: record 21: gold: missing",
        f"{p}:211: record 31: question: no option block ('A. ...', 'B. ...' lines) at the end of the question",
        f"{p}:281: record 41: id: duplicate id 'medqa-000762' (first at record 40)",
    ]


def test_error_line_points_at_the_record(corrupted):
    lines = corrupted.read_text(encoding="utf-8").splitlines()
    assert lines[113].strip() == "{"  # line 114 opens record 17
    assert '"gold": "E"' in "\n".join(lines[113:121])


def test_invalid_json_names_its_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n {"id": "a", "question": "q\\nA. x\\nB. y", "gold": "A"},\n {"id": "b" "gold": "A"}\n]', encoding="utf-8")
    rep = validate_file(path)
    assert rep.errors == [f"{path}:3: <file>: invalid JSON (Expecting ',' delimiter at column 13)"]


def test_non_utf8_bytes_name_their_line(tmp_path):
    path = tmp_path / "latin1.json.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(b'[\n {"id": "a",\n  "question": "caf\xe9?\\nA. yes\\nB. no", "gold": "A"}\n]')
    rep = validate_file(path)
    assert len(rep.errors) == 1 and rep.errors[0].startswith(f"{path}:3: <file>: not valid UTF-8")


def test_question_jsonl_records_are_checked_per_line(tmp_path):
    rows = [q.to_dict() for q in load_training_source("bioasq", RAW)[:3]]
    rows[2]["answer"] = "C"
    rows.append(dict(rows[0]))
    path = tmp_path / "questions.jsonl"
    write_jsonl(path, rows)
    rep = validate_file(path)
    assert rep.shape == "questions-jsonl" and rep.rows == 2
    assert rep.errors == [f"{path}:3: answer: 'C' is not among options A-B",
                          f"{path}:4: id: duplicate id '{rows[0]['id']}' (first on line 1)"]


def test_main_validate_exit_status(tmp_path, corrupted, capsys):
    good = RAW / DECLARED["pubmedqa"].file
    assert main_validate([str(good)]) == 0
    assert main_validate([str(good), str(corrupted)]) == 1
    out = capsys.readouterr().out
    assert "validate: 2 file(s)" in out and "1 file(s) with errors" in out
    assert main_validate([str(tmp_path / "missing.json")]) == 1


def test_jsonl_is_read_to_the_end_and_every_bad_line_is_reported(tmp_path, capsys):
    """Reading once stopped at the first invalid JSON line and reported the rows before it as the file (#13.8)."""
    rows = [json.dumps(q.to_dict()) for q in load_training_source("bioasq", RAW)[:6]]
    lines = [rows[0], "not json", rows[1], '{"id": "x"', rows[2], "[1, 2]", rows[3], "", rows[4], rows[4]]
    path = tmp_path / "questions.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rep = validate_file(path)
    dup = json.loads(rows[4])["id"]
    assert rep.rows == 5
    assert rep.errors == [f"{path}:2: <row>: invalid JSON (Expecting value at column 1)",
                          f"{path}:4: <row>: invalid JSON (Expecting ',' delimiter at column 11)",
                          f"{path}:6: <row>: expected a JSON object, got list",
                          f"{path}:10: id: duplicate id '{dup}' (first on line 9)"]
    assert main_validate([str(path)]) == 1
    assert "5 valid rows" in capsys.readouterr().out


def test_bad_bytes_cost_only_their_line(tmp_path):
    good = json.dumps(load_training_source("bioasq", RAW)[0].to_dict()).encode()
    path = tmp_path / "questions.jsonl.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(b'{"id": "caf\xe9"}\n' + good + b"\n")
    rep = validate_file(path)
    assert rep.rows == 1 and len(rep.errors) == 1 and rep.errors[0].startswith(f"{path}:1: <row>: not valid UTF-8")


def test_the_printed_list_is_capped_with_a_count(tmp_path):
    path = tmp_path / "questions.jsonl"
    path.write_text("not json\n" * 120, encoding="utf-8")
    rep = validate_file(path)
    assert len(rep.errors) == 120
    printed = rep.lines()
    assert len(printed) == 1 + 50 + 1 and printed[-1] == "  ... and 70 more error(s) not shown"
    assert printed[50].startswith(f"  {path}:50: ")


def test_a_json_list_broken_mid_file_says_the_rest_was_not_read(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n {"id": "a", "question": "q\\nA. x\\nB. y", "gold": "A"},\n {"id": "b" "gold": "A"},\n'
                    ' {"id": "c", "question": "q\\nA. x\\nB. y", "gold": "B"}\n]', encoding="utf-8")
    rep = validate_file(path)
    assert rep.rows == 1
    assert rep.lines()[0].startswith(f"{path}: benchmark-json, 1 valid rows before line 3 (the rest cannot be parsed)")
