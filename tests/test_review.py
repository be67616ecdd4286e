"""Physician review sheets: reproducible export, self-contained HTML, Table 4 figures, row-level errors."""

from __future__ import annotations

import csv
import json
import re

import pytest

from medssr.records import Question, write_jsonl
from medssr.review import ReviewError, export_review, import_review, main_review


def _labeled(tmp_path, n=30):
    qs = []
    for i in range(n):
        opts = {"A": f"Drug {i}a", "B": f"Drug {i}b", "C": "Supportive care", "D": "Surgery"}
        if i % 5 == 0:
            opts["E"] = "Observation"
        qs.append(Question(id=f"syn-{i:03d}", source="synthetic", split="train",
                           question=f"A {20 + i}-year-old presents with <b>rash</b> & fever.\nWhat is the next step?",
                           options=opts, rare_disease="Fabry disease" if i % 3 == 0 else None,
                           votes=["A", "A", "B", "A"], majority="A", agreement=0.75))
    path = tmp_path / "synthetic.jsonl"
    write_jsonl(path, qs)
    return path


def _rows(path):
    with open(path, encoding="utf-8-sig", newline="") as fh:
        return list(csv.reader(fh))


def test_export_same_seed_gives_same_rows(tmp_path):
    src = _labeled(tmp_path)
    a, _ = export_review(src, tmp_path / "a", n=10, seed=7)
    b, _ = export_review(src, tmp_path / "b", n=10, seed=7)
    c, _ = export_review(src, tmp_path / "c", n=10, seed=8)
    assert _rows(a) == _rows(b)
    assert [r[1] for r in _rows(a)[1:]] != [r[1] for r in _rows(c)[1:]]
    assert len(_rows(a)) == 11


def test_export_sheet_has_rating_columns_and_voted_label(tmp_path):
    csv_path, _ = export_review(_labeled(tmp_path), tmp_path / "out", n=30, seed=0)
    header, *rows = _rows(csv_path)
    for col in ("correct", "harmful", "plausibility", "reviewer", "group", "label", "option_E"):
        assert col in header
    assert all(r[header.index("label")] == "A" for r in rows)
    assert all("\n" not in cell for r in rows for cell in r)


def test_export_html_is_self_contained_and_escaped(tmp_path):
    _, html_path = export_review(_labeled(tmp_path), tmp_path / "out", n=5, seed=0)
    page = html_path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page)
    assert "<script" not in page
    assert "&lt;b&gt;rash&lt;/b&gt; &amp; fever" in page
    assert page.count('class="q"') == 5


def _write_sheet(path, rows, header=("id", "correct", "harmful", "plausibility", "reviewer", "group")):
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_import_computes_table4_figures(tmp_path):
    senior = [(f"q{i}", "n" if i == 0 else "y", "y" if i == 0 else "", 5 if i % 2 else 4, "S1" if i < 2 else "S2", "senior")
              for i in range(4)]
    junior = [(f"q{i}", "y", "n", 5, "J1", "Junior") for i in range(4)]
    s = _write_sheet(tmp_path / "senior.csv", senior)
    j = _write_sheet(tmp_path / "junior.csv", junior + [("q9", "", "", "", "", "")])  # an unrated row is skipped
    res = import_review([s, j], log_mlflow=False)
    assert res["senior"]["n_questions"] == 4 and res["senior"]["n_ratings"] == 4
    assert res["senior"]["incorrect_pct"] == pytest.approx(25.0)
    assert res["senior"]["harmful_pct"] == pytest.approx(25.0)
    assert res["senior"]["plausibility_mean"] == pytest.approx(4.5)
    assert res["senior"]["plausibility_sd"] == pytest.approx(0.57735, abs=1e-4)
    assert res["junior"]["incorrect_pct"] == 0.0 and res["junior"]["plausibility_mean"] == 5.0
    assert res["overall"]["n_questions"] == 4 and res["overall"]["n_ratings"] == 8
    assert res["overall"]["incorrect_pct"] == pytest.approx(25.0)  # flagged by any reviewer, over distinct questions
    assert res["overall"]["plausibility_mean"] == pytest.approx(4.75)
    assert res["senior"]["reviewers"]["S1"]["n_incorrect"] == 1
    assert res["metrics"]["review/overall/incorrect_pct"] == pytest.approx(25.0)


def test_import_errors_name_file_row_and_column(tmp_path):
    sheet = _write_sheet(tmp_path / "sheet.csv", [("q1", "y", "n", 5, "A", "senior")] * 10 + [("q2", "y", "n", 7, "A", "senior"),
                                                                                               ("q3", "maybe", "n", 3, "A", "resident")])
    with pytest.raises(ReviewError) as e:
        import_review([sheet], log_mlflow=False)
    msg = str(e.value)
    assert f"{sheet}:12: plausibility: expected 1-5, got '7'" in msg
    assert f"{sheet}:13: correct: expected y or n, got 'maybe'" in msg
    assert f"{sheet}:13: group: expected senior or junior, got 'resident'" in msg
    assert f"{sheet}:3: id: reviewer 'A' already rated 'q1'" in msg


def test_import_rejects_sheet_without_rating_columns(tmp_path):
    sheet = _write_sheet(tmp_path / "bad.csv", [("q1", "y")], header=("id", "correct"))
    with pytest.raises(ReviewError, match=r"bad.csv:1: harmful: column missing"):
        import_review([sheet], log_mlflow=False)


def test_import_logs_review_metrics_to_mlflow(tmp_path, mlflow_store):
    sheet = _write_sheet(tmp_path / "s.csv", [("q1", "y", "n", 4, "A", "senior"), ("q2", "y", "n", 5, "B", "junior")])
    res = import_review([sheet], experiment="review-test")
    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri=mlflow_store).get_run(res["mlflow_run_id"])
    assert run.data.metrics["review/overall/plausibility_mean"] == pytest.approx(4.5)
    assert run.data.metrics["review/senior/incorrect_pct"] == 0.0
    assert run.data.tags["medssr_role"] == "review"


def test_main_review_export_then_import_round_trip(tmp_path, capsys):
    src = _labeled(tmp_path)
    assert main_review(["export", "--n", "3", "--input", str(src), "--out", str(tmp_path / "rev")]) == 0
    sheet = next((tmp_path / "rev").glob("*.csv"))
    header, *rows = _rows(sheet)
    for r in rows:
        r[header.index("correct")], r[header.index("plausibility")] = "y", "5"
        r[header.index("reviewer")], r[header.index("group")] = "Dr X", "senior"
    with open(sheet, "w", encoding="utf-8-sig", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])
    assert main_review(["import", str(sheet), "--no-mlflow"]) == 0
    out = capsys.readouterr().out
    assert "| Senior | 3 | 3 | 0/3 (0.00%) |" in out
    assert main_review(["import", str(tmp_path / "missing.csv"), "--no-mlflow"]) == 2


def test_an_export_of_fewer_questions_than_asked_says_why(tmp_path, capsys):
    """`medssr review export --n 20` wrote 12 without saying why (#15.4)."""
    src = _labeled(tmp_path, n=12)
    unlabeled = [Question(id=f"syn-u{i}", source="synthetic", split="train", question="Q?", options={"A": "a", "B": "b"},
                          votes=["A", "B"], majority=None, agreement=0.5) for i in range(3)]
    with open(src, "a", encoding="utf-8") as fh:
        for q in unlabeled:
            fh.write(json.dumps(q.to_dict()) + "\n")
    assert main_review(["export", "--n", "20", "--input", str(src), "--out", str(tmp_path / "rev")]) == 0
    out = capsys.readouterr().out
    assert "review_n12_seed0.csv" in out
    assert f"12 of the 20 asked (--n): {src} holds only 12 labeled questions; the other 3 carry no label" in out

