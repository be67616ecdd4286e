"""Pure scoring: accuracy with interval and n, decoding std, categories, the average rule, paired comparisons, names."""

from __future__ import annotations

import json

import pytest

from eval.scoring import (
    Prediction,
    accuracy,
    checkpoint_json,
    checkpoint_metrics,
    correct_matrix,
    format_table,
    invalid_rate,
    results_json,
    results_metrics,
    score_benchmark,
    score_checkpoint,
    score_runs,
)
from medssr.metric_names import eval_metric, eval_prefix, lookup, raredis_metric


def _p(qid, bench, run, correct, extracted="A", final="A", category=None):
    return Prediction(id=qid, benchmark=bench, run=run, gold="A", output="", extracted=extracted, constrained=None,
                      final=final, correct=correct, category=category)


def test_accuracy_is_share_correct():
    assert accuracy([True, False, True, True]) == 0.75


def test_accuracy_of_nothing_is_an_error():
    with pytest.raises(ValueError):
        accuracy([])


def test_invalid_rate_counts_missing_letters():
    assert invalid_rate(["A", None, "B", None]) == 0.5
    assert invalid_rate([]) == 0.0


def test_score_benchmark_averages_runs_and_counts_questions():
    preds = [_p("q1", "b", 0, True), _p("q2", "b", 0, False), _p("q1", "b", 1, True), _p("q2", "b", 1, True)]
    s = score_benchmark(preds)
    assert s.runs == [0.5, 1.0]
    assert s.acc == pytest.approx(0.75)
    assert s.n == 2
    assert s.run_std == pytest.approx(0.25)  # population std over runs (paper Table 9), not the sample std 0.354


def test_wilson_interval_is_over_questions_not_runs():
    preds = [_p(f"q{i}", "b", r, i < 3) for i in range(16) for r in range(4)]
    s = score_runs(preds)
    assert (s.n, s.acc) == (16, 3 / 16)
    assert (round(100 * s.ci_low, 1), round(100 * s.ci_high, 1)) == (6.6, 43.0)  # 3/16, not 12/64


def test_correct_matrix_rejects_a_missing_run():
    with pytest.raises(ValueError, match="no prediction for run 1"):
        correct_matrix([_p("q1", "b", 0, True), _p("q1", "b", 1, True), _p("q2", "b", 0, True)])


def test_invalid_before_and_after_constrained_pass():
    preds = [_p("q1", "b", 0, True, extracted=None, final="A"), _p("q2", "b", 0, False, extracted=None, final=None),
             _p("q3", "b", 0, True), _p("q4", "b", 0, True)]
    s = score_benchmark(preds)
    assert s.invalid_before == 0.5
    assert s.invalid_after == 0.25


def test_echo_rate_is_the_share_of_outputs_that_only_echoed_the_options():
    preds = [_p(f"q{i}", "b", 0, False, extracted=None, final="B") for i in range(4)]
    preds[0].second_pass_reason = "echo"
    preds[1].second_pass_reason = "no_answer"
    assert score_benchmark(preds).echo_rate == 0.25


def test_categories_in_paper_order_with_counts():
    preds = [_p("q1", "raredis_sub", 0, True, category="Treatment"), _p("q2", "raredis_sub", 0, False, category="Symptoms"),
             _p("q3", "raredis_sub", 0, True, category="Symptoms"), _p("q4", "raredis_sub", 0, True, category="Related disorders")]
    cats = score_benchmark(preds).categories
    assert list(cats) == ["Symptoms", "Related disorders", "Treatment"]
    assert (cats["Symptoms"].n, cats["Symptoms"].acc) == (2, 0.5)
    assert cats["Treatment"].n == 1


def test_checkpoint_score_macro_and_raredis_average_over_categories():
    preds = [_p("a", "medqa", 0, True), _p("b", "medqa", 0, False),  # 0.5
             _p("c", "pubmedqa", 0, True),  # 1.0
             _p("d", "raredis_sub", 0, True, category="Causes"), _p("e", "raredis_sub", 0, True, category="Causes"),
             _p("f", "raredis_sub", 0, False, category="Others")]
    s = score_checkpoint(preds)
    assert s.avg.acc == pytest.approx(0.75)  # not 2/3 (micro) and raredis excluded
    assert (s.avg.parts, s.avg.n) == (2, 3)
    assert s.raredis_avg.acc == pytest.approx(0.5)  # macro over categories (paper Table 1 "Avg"), not 2/3
    assert s.benchmarks["raredis_sub"].acc == pytest.approx(2 / 3)


def test_average_can_be_restricted_to_named_benchmarks():
    preds = [_p("a", "medqa", 0, True), _p("b", "my_bench", 0, False), _p("c", "pubmedqa", 0, False)]
    s = score_checkpoint(preds, average_over={"medqa", "pubmedqa", "nejm"})  # nejm not evaluated: averaged where present
    assert (s.avg.acc, s.avg.parts, s.avg_of) == (0.5, 2, ["medqa", "pubmedqa"])


def test_average_std_is_population_std_of_per_run_averages():
    preds = [_p("a", "x", 0, True), _p("a", "x", 1, False), _p("b", "y", 0, True), _p("b", "y", 1, False)]
    s = score_checkpoint(preds)
    assert s.avg.acc == pytest.approx(0.5)
    assert s.avg.run_std == pytest.approx(0.5)  # per-run averages 1.0 and 0.0


def test_average_interval_is_a_bootstrap_within_each_benchmark():
    preds = [_p(f"a{i}", "x", 0, True) for i in range(4)] + [_p(f"b{i}", "y", 0, False) for i in range(9)]
    s = score_checkpoint(preds, n_boot=200)
    assert (s.avg.acc, s.avg.ci_low, s.avg.ci_high) == (0.5, 0.5, 0.5)  # each benchmark keeps its own questions
    assert score_checkpoint(preds).avg.ci_low is None  # no bootstrap, no interval


def test_checkpoint_json_shape_for_dvc_metrics():
    preds = [_p("a", "medqa", 0, True), _p("d", "raredis_sub", 0, True, category="Related disorders")]
    j = checkpoint_json(score_checkpoint(preds))
    assert j["medqa"] == {"acc": 1.0, "ci_low": 0.206549, "ci_high": 1.0, "n": 1, "run_std": 0.0, "invalid_before": 0.0,
                          "invalid_after": 0.0, "echo_rate": 0.0}
    assert (j["avg"], j["avg_n"], j["n_benchmarks"], j["n_runs"], j["ci_level"]) == (1.0, 1, 1, 1, 0.95)
    assert j["raredis"]["related_disorders"] == {"acc": 1.0, "ci_low": 0.206549, "ci_high": 1.0, "n": 1, "run_std": 0.0}
    assert "raredis_sub" in j


def test_metric_names_match_the_registry_helpers_and_prefix_non_final_checkpoints():
    preds = [_p("a", "medqa", 0, True), _p("d", "raredis_sub", 0, True, category="Related disorders")]
    final = checkpoint_metrics(score_checkpoint(preds), eval_prefix("stage2", final=True))
    assert eval_metric("medqa", "acc") in final
    assert raredis_metric("Related disorders") in final
    assert "eval/avg" in final and "eval/raredis/avg" in final
    base = checkpoint_metrics(score_checkpoint(preds), eval_prefix("base", final=False))
    assert "eval/base/medqa/acc" in base and "eval/base/raredis/related_disorders/acc" in base and "eval/base/avg" in base


def _two_checkpoints(runs: int = 1) -> dict[str, list[Prediction]]:
    """base right on q0-q2, stage2 on q0-q5 of 16 medqa questions; both 2 of 4 raredis_sub 'Causes' questions."""
    out: dict[str, list[Prediction]] = {}
    for name, right in (("base", 3), ("stage2", 6)):
        out[name] = ([_p(f"q{i}", "medqa", r, i < right) for i in range(16) for r in range(runs)]
                     + [_p(f"r{i}", "raredis_sub", r, i % 2 == 0, category="Causes") for i in range(4) for r in range(runs)])
    return out


def test_results_json_compares_each_checkpoint_with_base_on_the_same_questions():
    res = results_json(_two_checkpoints(), n_boot=500, seed=0)
    assert "vs_base" not in res["base"]
    vs = res["stage2"]["vs_base"]
    assert vs["medqa"]["diff"] == pytest.approx(3 / 16)
    assert (vs["medqa"]["n"], vs["medqa"]["b"], vs["medqa"]["c"]) == (16, 3, 0)
    assert vs["medqa"]["p_mcnemar"] == 0.25  # 2 * P[X <= 0], X ~ Bin(3, 1/2)
    assert vs["medqa"]["ci_low"] <= 3 / 16 <= vs["medqa"]["ci_high"]
    assert vs["raredis"]["causes"] == {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "n": 4, "b": 0, "c": 0, "p_mcnemar": 1.0}
    assert vs["avg"]["diff"] == pytest.approx(3 / 16)  # raredis_sub is not in the average


def test_results_json_is_byte_reproducible_for_a_seed():
    a = json.dumps(results_json(_two_checkpoints(2), n_boot=300, seed=5))
    assert a == json.dumps(results_json(_two_checkpoints(2), n_boot=300, seed=5))


def test_results_json_holds_numbers_only():
    def leaves(d):
        return [x for v in d.values() for x in (leaves(v) if isinstance(v, dict) else [v])]

    values = leaves(results_json(_two_checkpoints(2), n_boot=100))
    assert values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def test_results_json_without_bootstrap_has_no_intervals_for_differences_or_averages():
    res = results_json(_two_checkpoints(), n_boot=0)
    assert "ci_low" not in res["stage2"]["vs_base"]["medqa"] and "avg_ci_low" not in res["stage2"]
    assert "ci_low" in res["stage2"]["medqa"]  # Wilson needs no resampling


def test_mcnemar_with_several_runs_pairs_majority_correctness():
    preds = _two_checkpoints(1)
    two = {n: ps + [_p(p.id, p.benchmark, 1, False, category=p.category) for p in ps] for n, ps in preds.items()}
    three = {n: ps + [_p(p.id, p.benchmark, r, p.correct, category=p.category) for p in ps for r in (1, 2)] for n, ps in preds.items()}
    assert results_json(two)["stage2"]["vs_base"]["medqa"]["b"] == 0  # right in 1 of 2 runs is no majority
    assert results_json(three)["stage2"]["vs_base"]["medqa"]["b"] == 3


def test_results_metrics_names_the_final_checkpoint_unprefixed_and_comparisons_under_vs_base():
    m = results_metrics(results_json(_two_checkpoints(), n_boot=50))
    assert {"eval/medqa/acc", "eval/medqa/ci_low", "eval/medqa/run_std", "eval/avg_ci_high", "eval/n_benchmarks",
            "eval/vs_base/medqa/diff", "eval/vs_base/medqa/p_mcnemar", "eval/vs_base/raredis/causes/b",
            "eval/base/medqa/acc", "eval/raredis/avg_ci_low"} <= set(m)
    assert not any("/vs_base/" in k for k in m if k.startswith("eval/base/"))


def test_format_table_shows_accuracy_interval_and_n_per_checkpoint():
    table = format_table(results_json(_two_checkpoints(), n_boot=100), display_names={"medqa": "MedQA"})
    lines = table.splitlines()
    assert lines[0].split() == ["benchmark", "n", "base", "stage2"]
    assert lines[2].split() == ["MedQA", "16", "18.8", "[6.6,", "43.0]", "37.5", "[18.5,", "61.4]"]
    assert any(line.startswith("avg (1 benchmark)") for line in lines)
    assert any(line.startswith("  Causes") for line in lines)


def test_format_table_shows_each_difference_to_base_with_its_p_value():
    lines = format_table(results_json(_two_checkpoints(), n_boot=100)).splitlines()
    head = next(i for i, line in enumerate(lines) if "stage2 − base" in line)
    medqa = next(line for line in lines[head:] if line.startswith("medqa"))
    assert medqa.split()[1] == "+18.8" and medqa.split()[-1] == "p=0.250"


def test_format_table_shows_decoding_std_only_with_several_runs():
    assert "±" not in format_table(results_json(_two_checkpoints(1)))
    assert "± run-to-run std over k=2 runs" in format_table(results_json(_two_checkpoints(2)))


# --------------------------------------------------------------------------------------------------------------
# the average row's p is a test of the macro difference it sits beside


def _disagreeing(lost: int, big: int, won: int, small: int, n_small: int, runs: int = 1) -> dict[str, list[Prediction]]:
    """One big benchmark where stage2 loses ``lost`` of ``big`` questions base gets right, and ``n_small`` small ones
    of ``small`` questions where it wins ``won`` base gets wrong: few questions, but most of the benchmarks."""
    out: dict[str, list[Prediction]] = {"base": [], "stage2": []}
    for r in range(runs):
        for i in range(big):
            out["base"].append(_p(f"big{i}", "big", r, i < lost or i % 2 == 0))
            out["stage2"].append(_p(f"big{i}", "big", r, i >= lost and i % 2 == 0))
        for s in range(n_small):
            for i in range(small):
                out["base"].append(_p(f"s{s}-{i}", f"small{s}", r, False))
                out["stage2"].append(_p(f"s{s}-{i}", f"small{s}", r, i < won))
    return out


def test_average_p_tests_the_macro_difference_where_the_pooled_questions_point_the_other_way():
    # 60 of 400 lost on one benchmark, 6 of 10 won on each of four: more questions lost (b 24 < c 60, pooled McNemar
    # p < 0.001 for base) but the macro difference is +45 points on 4 of 5 benchmarks; its own test finds it
    vs = results_json(_disagreeing(lost=60, big=400, won=6, small=10, n_small=4), n_boot=200, seed=0)["stage2"]["vs_base"]
    avg = vs["avg"]
    assert avg["diff"] == pytest.approx((-60 / 400 + 4 * 0.6) / 5) and avg["diff"] > 0
    assert (avg["b"], avg["c"]) == (24, 60) and avg["p_mcnemar_pooled"] < 0.001  # pooled: base wins more questions
    assert avg["p_perm_macro"] < 0.001  # the macro difference, tested as itself: 84 differing questions, Monte Carlo
    assert avg["ci_low"] > 0  # and it agrees with the bootstrap interval of the same statistic
    assert "p_mcnemar" not in avg  # no key named like the benchmarks' test that means something else here
    assert vs["big"]["p_mcnemar"] < 0.001 and vs["big"]["diff"] < 0 and "p_perm_macro" not in vs["big"]


def test_average_p_is_the_exact_permutation_p_where_pooled_mcnemar_sees_nothing():
    # 6 of 100 lost, 3 of 3 won on each of three: pooled b 9 vs c 6 (p 0.61), macro +73.5 points; 15 differing
    # questions are enumerated: only the 2 x 64 swaps keeping the 9 wins together reach it, p = 2^-8
    avg = results_json(_disagreeing(lost=6, big=100, won=3, small=3, n_small=3))["stage2"]["vs_base"]["avg"]
    assert avg["diff"] == pytest.approx((-0.06 + 3) / 4)
    assert avg["p_mcnemar_pooled"] == pytest.approx(0.607239, abs=1e-6)
    assert avg["p_perm_macro"] == 2**-8


def test_average_p_of_identical_checkpoints_is_one_and_of_all_improved_is_small():
    same = _two_checkpoints()
    same["stage2"] = [_p(p.id, p.benchmark, p.run, p.correct, category=p.category) for p in same["base"]]
    vs = results_json(same)["stage2"]["vs_base"]
    assert vs["avg"]["p_perm_macro"] == 1.0 and vs["raredis"]["avg"]["p_perm_macro"] == 1.0
    up = _disagreeing(lost=0, big=8, won=4, small=4, n_small=2)  # big: nothing differs; 8 of 8 small questions won
    assert results_json(up)["stage2"]["vs_base"]["avg"]["p_perm_macro"] == 2 / 2**8


def test_average_p_is_seeded_reproducible_and_independent_of_the_bootstrap():
    preds = _disagreeing(lost=30, big=200, won=2, small=10, n_small=4, runs=2)  # 76 x 2 runs: Monte Carlo
    a = results_json(preds, n_boot=0, seed=3)["stage2"]["vs_base"]["avg"]
    assert a == results_json(preds, n_boot=0, seed=3)["stage2"]["vs_base"]["avg"]
    assert a["p_perm_macro"] == results_json(preds, n_boot=300, seed=3)["stage2"]["vs_base"]["avg"]["p_perm_macro"]
    assert a["p_perm_macro"] != results_json(preds, n_boot=0, seed=4)["stage2"]["vs_base"]["avg"]["p_perm_macro"]


def test_average_tests_are_named_in_eval_json_mlflow_and_the_table():
    res = results_json(_disagreeing(lost=6, big=100, won=3, small=3, n_small=3), n_boot=100)
    assert list(res["stage2"]["vs_base"]["avg"]) == ["diff", "ci_low", "ci_high", "n", "b", "c", "p_perm_macro", "p_mcnemar_pooled"]
    names = set(results_metrics(res))
    assert {"eval/vs_base/avg/p_perm_macro", "eval/vs_base/avg/p_mcnemar_pooled", "eval/vs_base/big/p_mcnemar"} <= names
    assert "eval/vs_base/avg/p_mcnemar" not in names
    assert all(lookup(n) for n in names)  # every name registered
    lines = format_table(res).splitlines()
    head = next(i for i, line in enumerate(lines) if "stage2 − base" in line)
    assert next(line for line in lines[head:] if line.startswith("avg")).endswith("perm p=0.004")
    assert next(line for line in lines[head:] if line.startswith("big")).split()[-1].startswith("p=")
    assert any(line.startswith("avg rows: perm p = paired permutation test of the macro difference") for line in lines)


def test_raredis_average_p_is_its_own_macro_permutation_test():
    preds = {n: [_p(f"r{i}", "raredis_sub", 0, right(i), category=("Causes", "Symptoms")[i % 2]) for i in range(8)]
             for n, right in (("base", lambda i: False), ("stage2", lambda i: i % 2 == 0 or i == 1))}
    rd = results_json(preds)["stage2"]["vs_base"]["raredis"]
    assert rd["causes"]["p_mcnemar"] == 0.125 and "p_perm_macro" not in rd["causes"]
    assert rd["avg"]["diff"] == pytest.approx((1 + 0.25) / 2)
    assert rd["avg"]["p_perm_macro"] == 2 / 2**5 and rd["avg"]["p_mcnemar_pooled"] == 2 / 2**5


def test_table_of_an_older_eval_json_labels_its_average_p_as_pooled():
    res = results_json(_two_checkpoints())
    vs = res["stage2"]["vs_base"]
    for avg in (vs["avg"], vs["raredis"]["avg"]):
        avg["p_mcnemar"] = avg.pop("p_mcnemar_pooled")  # as eval.json held it before p_perm_macro
        del avg["p_perm_macro"]
    lines = format_table(res).splitlines()
    head = next(i for i, line in enumerate(lines) if "stage2 − base" in line)
    assert next(line for line in lines[head:] if line.startswith("avg")).endswith("pooled p=0.250")
    assert not any(line.startswith("avg rows: perm p") for line in lines)
