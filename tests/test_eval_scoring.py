"""Pure scoring: accuracy, mean/std over runs, per-category counts, the average rule, invalid rates, metric names."""

from __future__ import annotations

import pytest

from eval.scoring import (
    Prediction,
    accuracy,
    checkpoint_json,
    checkpoint_metrics,
    format_table,
    invalid_rate,
    macro_average,
    mean_std,
    metric_prefix,
    score_benchmark,
    score_checkpoint,
)
from medssr.tracking import eval_metric, raredis_metric


def _p(qid, bench, run, correct, extracted="A", final="A", category=None):
    return Prediction(id=qid, benchmark=bench, run=run, gold="A", output="", extracted=extracted, constrained=None,
                      final=final, correct=correct, category=category)


def test_accuracy_is_share_correct():
    assert accuracy([True, False, True, True]) == 0.75


def test_accuracy_of_nothing_is_an_error():
    with pytest.raises(ValueError):
        accuracy([])


def test_mean_std_uses_sample_std_over_runs():
    m, s = mean_std([0.5, 0.7])
    assert m == pytest.approx(0.6)
    assert s == pytest.approx(0.141421, abs=1e-6)


def test_mean_std_of_one_run_has_zero_std():
    assert mean_std([0.4]) == (0.4, 0.0)


def test_invalid_rate_counts_missing_letters():
    assert invalid_rate(["A", None, "B", None]) == 0.5
    assert invalid_rate([]) == 0.0


def test_score_benchmark_averages_runs_and_counts_questions():
    preds = [_p("q1", "b", 0, True), _p("q2", "b", 0, False), _p("q1", "b", 1, True), _p("q2", "b", 1, True)]
    s = score_benchmark(preds)
    assert s.runs == [0.5, 1.0]
    assert s.acc == pytest.approx(0.75)
    assert s.n == 2


def test_invalid_before_and_after_constrained_pass():
    preds = [_p("q1", "b", 0, True, extracted=None, final="A"), _p("q2", "b", 0, False, extracted=None, final=None),
             _p("q3", "b", 0, True), _p("q4", "b", 0, True)]
    s = score_benchmark(preds)
    assert s.invalid_before == 0.5
    assert s.invalid_after == 0.25


def test_categories_in_paper_order_with_counts():
    preds = [_p("q1", "raredis_sub", 0, True, category="Treatment"), _p("q2", "raredis_sub", 0, False, category="Symptoms"),
             _p("q3", "raredis_sub", 0, True, category="Symptoms"), _p("q4", "raredis_sub", 0, True, category="Related disorders")]
    cats = score_benchmark(preds).categories
    assert list(cats) == ["Symptoms", "Related disorders", "Treatment"]
    assert (cats["Symptoms"].n, cats["Symptoms"].acc) == (2, 0.5)
    assert cats["Treatment"].n == 1


def test_average_is_macro_over_main_benchmarks_without_raredis():
    assert macro_average({"medqa": 0.5, "pubmedqa": 0.7, "raredis_sub": 0.1}) == pytest.approx(0.6)
    assert macro_average({"raredis_sub": 0.1}) is None


def test_checkpoint_score_macro_and_raredis_average_over_categories():
    preds = [_p("a", "medqa", 0, True), _p("b", "medqa", 0, False),  # 0.5
             _p("c", "pubmedqa", 0, True),  # 1.0
             _p("d", "raredis_sub", 0, True, category="Causes"), _p("e", "raredis_sub", 0, True, category="Causes"),
             _p("f", "raredis_sub", 0, False, category="Others")]
    s = score_checkpoint(preds)
    assert s.avg == pytest.approx(0.75)  # not 2/3 (micro) and raredis excluded
    assert s.raredis_avg == pytest.approx(0.5)  # macro over categories (paper Table 1 "Avg"), not 2/3
    assert s.benchmarks["raredis_sub"].acc == pytest.approx(2 / 3)


def test_average_std_is_std_of_per_run_averages():
    preds = [_p("a", "x", 0, True), _p("a", "x", 1, False), _p("b", "y", 0, True), _p("b", "y", 1, False)]
    s = score_checkpoint(preds)
    assert s.avg == pytest.approx(0.5)
    assert s.avg_std == pytest.approx(0.707107, abs=1e-6)


def test_checkpoint_json_shape_for_dvc_metrics():
    preds = [_p("a", "medqa", 0, True), _p("d", "raredis_sub", 0, True, category="Related disorders")]
    j = checkpoint_json(score_checkpoint(preds))
    assert j["medqa"] == {"acc": 1.0, "std": 0.0, "n": 1, "invalid_before": 0.0, "invalid_after": 0.0}
    assert j["avg"] == 1.0
    assert j["raredis"]["related_disorders"] == {"acc": 1.0, "std": 0.0, "n": 1}
    assert "raredis_sub" in j


def test_metric_names_match_tracking_helpers_and_prefix_non_final_checkpoints():
    preds = [_p("a", "medqa", 0, True), _p("d", "raredis_sub", 0, True, category="Related disorders")]
    final = checkpoint_metrics(score_checkpoint(preds), metric_prefix("stage2", final=True))
    assert eval_metric("medqa", "acc") in final
    assert raredis_metric("Related disorders") in final
    assert "eval/avg" in final and "eval/raredis/avg" in final
    base = checkpoint_metrics(score_checkpoint(preds), metric_prefix("base", final=False))
    assert "eval/base/medqa/acc" in base and "eval/base/raredis/related_disorders/acc" in base and "eval/base/avg" in base


def test_format_table_shows_percent_per_checkpoint():
    preds = [_p("a", "medqa", 0, True), _p("b", "medqa", 0, False)]
    table = format_table({"base": checkpoint_json(score_checkpoint(preds)), "stage2": checkpoint_json(score_checkpoint(preds[:1]))})
    lines = table.splitlines()
    assert lines[0].split() == ["benchmark", "base", "stage2"]
    assert lines[2].split() == ["medqa", "50.00", "100.00"]
