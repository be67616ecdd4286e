"""The report stage: runs in a temp sqlite MLflow store (made by the real tracking helpers) -> report.md + valid PNGs."""

from __future__ import annotations

import csv

import pytest
from mlflow.tracking import MlflowClient

from eval.report import Cell, _err, collect_runs, main_report
from eval.runner import _log
from eval.scoring import Prediction, results_json, results_metrics
from medssr import tracking
from medssr.config import Params
from medssr.review import import_review

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EXP = "report-test"


def _preds(skill: float, run_count: int = 2) -> list[Prediction]:
    """Deterministic predictions whose accuracy grows with ``skill`` (0..1)."""
    out = []
    cats = ["Symptoms", "Causes", "Treatment", "Related disorders"]
    for run in range(run_count):
        for bench, n in (("medqa", 10), ("pubmedqa", 10), ("raredis_sub", 12)):
            for i in range(n):
                ok = (i + run) % 10 < round(10 * skill)
                out.append(Prediction(id=f"{bench}-{i}", benchmark=bench, run=run, gold="A", output="", extracted="A" if ok else None,
                                      constrained=None if ok else "B", final="A" if ok else "B", correct=ok,
                                      category=cats[i % 4] if bench == "raredis_sub" else None))
    return out


def _pipeline(tmp_path, rare_ratio: float, strategy: str, skill: float, experiment: str = EXP) -> None:
    """One pipeline execution as the stages log it: training curves on stage runs, then the evaluate stage."""
    p = Params()
    p.project.experiment = experiment
    p.synth.rare_ratio = rare_ratio
    p.train.strategy = strategy
    for stage in ("stage1", "stage2"):
        with tracking.stage_run(stage, p, {"train.strategy": strategy}) as mlflow:
            for step in range(4):
                mlflow.log_metrics({f"train/{stage}/reward_mean": skill * step / 3, f"train/{stage}/kl": 0.01 * step,
                                    f"train/{stage}/distinct_answers": 3 - step * skill,
                                    f"train/{stage}/accuracy": skill * step / 4}, step=step)
                # a summary copy as older medssr versions logged it (no longer a registered name): past the name check,
                # as a store from those versions holds it; the report must not draw it as a curve
                MlflowClient().log_metric(mlflow.active_run().info.run_id, f"train/{stage}/summary/reward_mean", 9.0, step=step)
    ckpts = {"base": "artifacts/models/policy", "stage1": "checkpoints/stage1", "stage2": "checkpoints/stage2"}
    preds = {name: _preds(s) for name, s in (("base", 0.3), ("stage1", (0.3 + skill) / 2), ("stage2", skill))}
    metrics = results_metrics(results_json(preds, n_boot=200), "stage2")
    _log(p, metrics, ckpts, "stage2", {})


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """One sqlite store for the module: a three-run sweep (two ratios, two strategies) and a review in EXP."""
    d = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{d}/mlflow.db")
        _pipeline(d, 0.13, "two_stage", 0.6)
        _pipeline(d, 0.25, "two_stage", 0.7)
        _pipeline(d, 0.25, "supervised", 0.5)
        sheet = d / "sheet.csv"
        with open(sheet, "w", newline="") as fh:
            csv.writer(fh).writerows([["id", "correct", "harmful", "plausibility", "reviewer", "group"],
                                      ["q1", "y", "n", "5", "A", "senior"], ["q1", "n", "y", "4", "B", "junior"]])
        import_review([sheet], experiment=EXP)
        yield d


@pytest.fixture
def store(sweep, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{sweep}/mlflow.db")
    return sweep


def test_collect_runs_reads_parents_with_merged_stage_metrics_and_histories(store):
    runs, reviews = collect_runs(EXP)
    assert len(runs) == 3 and len(reviews) == 1
    r = runs[0]
    assert r.checkpoints == ["base", "stage1", "stage2"] and r.final == "stage2"
    assert r.benchmarks("stage2")["medqa"].acc == pytest.approx(0.6)
    assert r.benchmarks("base")["medqa"].acc == pytest.approx(0.3)
    assert set(r.categories("stage2")) >= {"symptoms", "related_disorders", "avg"}
    assert [v for _, v in r.histories["train/stage1/reward_mean"]] == pytest.approx([0, 0.2, 0.4, 0.6])


def test_cells_carry_interval_and_n_and_differences_carry_p_values(store):
    r = collect_runs(EXP)[0][0]
    medqa = r.benchmarks("stage2")["medqa"]
    assert medqa.n == 10 and medqa.ci_low < medqa.acc < medqa.ci_high
    assert r.benchmarks("stage2")["avg"].ci_low is not None and r.benchmarks("stage2")["avg"].n == 20
    d = r.differences("stage2", "bench")["medqa"]
    assert d.diff == pytest.approx(0.3) and 0 < d.p <= 1 and d.ci_low <= d.diff <= d.ci_high
    assert "symptoms" in r.differences("stage1", "cat") and r.differences("base", "bench") == {}


def test_report_has_every_section_and_valid_pngs(store):
    out = store / "reports"
    assert main_report(out_dir=str(out), experiment=EXP) == 0
    md = (out / "report.md").read_text()
    for heading in ("## Runs", "## General medical benchmarks (Table 2 style)", "## RareDis-Sub by category (Table 1 style)",
                    "## Rare-disease ratio sweep (Fig. 4", "## Training strategies (Table 3 style)", "## Training curves (Fig. 6 style)",
                    "## Physician review (Table 4 style)"):
        assert heading in md
    assert "| Symptoms | Causes |" in md and "RDs" in md
    assert "| two_stage (α=0.25) · stage I |" in md and "two_stage (α=0.13) · stage II" in md and "| supervised (α=0.25) |" in md
    assert "supervised (α=0.25) · stage I" not in md
    assert "| 13% |" in md and "| 25% |" in md
    assert "| n (questions) | 10 | 10 | 20 |" in md  # medqa, pubmedqa, their average
    assert "| 60.00 [31.3, 83.2] ± 0.00" not in md and "60.00 [31.3, 83.2]" in md  # Wilson at 6/10, no zero std
    assert "## Paired differences to base" in md
    assert "· stage2 − base | +30.00 [" in md and " p=" in md
    assert "| Senior | 1 | 0/1 (0.00%)" in md and "| Junior | 1 | 1/1 (100.00%)" in md
    for png in ("table2_benchmarks.png", "table1_raredis.png", "fig4_rare_ratio.png", "fig6_training.png"):
        assert f"](figures/{png})" in md
        data = (out / "figures" / png).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000
        import matplotlib.image

        assert matplotlib.image.imread(out / "figures" / png).ndim == 3


def test_error_bars_are_the_interval_else_the_std():
    assert _err(Cell(0.25, 0.05, ci_low=0.1, ci_high=0.5)) == pytest.approx((0.15, 0.25))
    assert _err(Cell(0.25, 0.05)) == (0.05, 0.05)  # a run logged before intervals existed
    assert _err(None) == (0.0, 0.0)


def test_report_on_an_empty_experiment_says_so(tmp_path, store):
    assert main_report(out_dir=str(tmp_path / "r"), experiment="nothing-here") == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "No pipeline runs in this experiment yet" in md
    assert "No sweep runs yet" in md
    assert not list((tmp_path / "r").rglob("*.png"))


def test_single_run_reports_no_sweep_and_one_strategy(tmp_path, store):
    _pipeline(tmp_path, 0.25, "two_stage", 0.7, experiment="single-run")
    assert main_report(out_dir=str(tmp_path / "r"), experiment="single-run") == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "No sweep runs yet" in md
    assert "Only one training strategy evaluated so far (two_stage)" in md
    assert (tmp_path / "r" / "figures" / "table2_benchmarks.png").exists()


def test_figure_rows_show_every_checkpoint_of_the_latest_run_and_columns_carry_n(store):
    from eval.report import _fig_rows, _with_n

    runs, _ = collect_runs(EXP)
    rows = _fig_rows([r for r in runs if r.evaluated], "bench")
    labels = [label for label, _ in rows]
    latest = runs[-1].label
    assert [lb.split(" · ")[1].split(" ")[0] for lb in labels if lb.startswith(latest)] == ["base", "stage1", "stage2"]
    assert all("α=" in lb for lb in labels if not lb.endswith("· base")), labels
    assert _with_n(rows, ["medqa", "avg"], ["MedQA", "Avg"]) == ["MedQA\nn=10", "Avg\nn=20"]


def test_training_curves_take_one_series_per_run_stage_and_name_not_summary_copies(store):
    from eval.report import CURVE_PANELS, _series

    runs, _ = collect_runs(EXP)
    for r in runs:
        assert [stage for stage, _ in _series(r, "reward_mean")] == ["stage1", "stage2"]
        assert all(v != 9.0 for _, h in _series(r, "reward_mean") for _, v in h), "a summary copy was drawn as a curve"
    assert [name for name, _, _ in CURVE_PANELS] == ["reward_mean", "accuracy", "kl", "distinct_answers"]
    assert all(_series(r, name) for r in runs for name, _, _ in CURVE_PANELS), "a Fig. 6 panel has no series"
