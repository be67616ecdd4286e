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


def _pipeline(tmp_path, rare_ratio: float, strategy: str, skill: float, experiment: str = EXP, target: float | None = None,
              measured: float | None = None, alpha_used: float | None = None) -> None:
    """One pipeline execution as the stages log it: the synthesize stage's rare shares (when ``measured`` is given),
    training curves on stage runs, then the evaluate stage."""
    p = Params()
    p.project.experiment = experiment
    p.synth.rare_ratio = rare_ratio
    p.synth.rare_share_target = target
    p.train.strategy = strategy
    if measured is not None:
        with tracking.stage_run("synthesize", p, {"synth.rare_share_target": target}) as mlflow:
            mlflow.log_metrics({"synth/rare_share_measured": measured, "synth/alpha_used": rare_ratio if alpha_used is None else alpha_used})
    for stage in ("stage1", "stage2"):
        with tracking.stage_run(stage, p, {"train.strategy": strategy}) as mlflow:
            for step in range(4):
                mlflow.log_metrics({f"train/{stage}/reward_mean": skill * step / 3, f"train/{stage}/kl": 0.01 * step,
                                    f"train/{stage}/distinct_answers": 3 - step * skill,
                                    f"train/{stage}/accuracy": skill * step / 4, f"train/{stage}/heldout_acc": skill * step / 5,
                                    f"train/{stage}/zero_std_group_share": 0.5}, step=step)
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
    assert (d.test, r.differences("stage2", "bench")["avg"].test, r.differences("stage2", "cat")["avg"].test) == ("mcnemar", "perm", "perm")


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
    assert "| α=13% |" in md and "| α=25% |" in md  # runs that logged no measured share (before #22.5) sit at their α
    assert "| n (questions) | 10 | 10 | 20 |" in md  # medqa, pubmedqa, their average
    assert "| 60.00 [31.3, 83.2] ± 0.00" not in md and "60.00 [31.3, 83.2]" in md  # Wilson at 6/10, no zero std
    assert "## Paired differences to base" in md
    assert "· stage2 − base | +30.00 [" in md and " p=" in md
    assert " perm p=" in md and "paired permutation test of the macro difference" in md  # the Avg column's own test
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
    assert [name for name, _, _ in CURVE_PANELS] == ["heldout_acc", "reward_mean", "accuracy", "kl", "distinct_answers",
                                                     "zero_std_group_share"]
    assert all(_series(r, name) for r in runs for name, _, _ in CURVE_PANELS), "a Fig. 6 panel has no series"


# -- Fig. 4's x is the measured rare-disease share (#22.5) ---------------------------------------------------------
def test_an_alpha_sweep_is_drawn_at_its_measured_shares_with_alpha_beside_them(tmp_path, monkeypatch):
    from eval.report import setting_label, sweep_groups, sweep_points

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    _pipeline(tmp_path, 0.0, "two_stage", 0.6, experiment="alpha-sweep", measured=0.13)  # §4.3: α = 0 is the natural 13 %
    _pipeline(tmp_path, 0.25, "two_stage", 0.7, experiment="alpha-sweep", measured=0.35)
    runs, _ = collect_runs("alpha-sweep")
    g = sweep_groups(runs)["two_stage"]
    assert [(x, setting) for x, setting, _ in sweep_points(g)] == [(pytest.approx(13.0), ("α", 0.0)), (pytest.approx(35.0), ("α", 0.25))]
    assert setting_label(("α", 0.25), g[("α", 0.25)]) == "α=25% · measured 35.0%"
    assert main_report(out_dir=str(tmp_path / "r"), experiment="alpha-sweep") == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| α=0% · measured 13.0% |" in md and "| α=25% · measured 35.0% |" in md and "| - → 35.0% |" in md
    assert (tmp_path / "r" / "figures" / "fig4_rare_ratio.png").read_bytes().startswith(PNG_MAGIC)


def test_a_sweep_of_the_target_share_is_a_sweep_though_alpha_stays_the_same(tmp_path, monkeypatch):
    from eval.report import sweep_groups, sweep_points

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    for target, skill, alpha in ((0.0, 0.6, 0.0), (0.13, 0.65, 0.01), (0.25, 0.7, 0.16)):
        _pipeline(tmp_path, 0.25, "two_stage", skill, experiment="share-sweep", target=target, measured=target, alpha_used=alpha)
    runs, _ = collect_runs("share-sweep")
    g = sweep_groups(runs)["two_stage"]
    assert [x for x, _, _ in sweep_points(g)] == pytest.approx([0.0, 13.0, 25.0])
    assert main_report(out_dir=str(tmp_path / "r"), experiment="share-sweep") == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| target 25% · measured 25.0% · α 0.16 |" in md and "| target 0% · measured 0.0% · α 0.00 |" in md
    assert "| 25% → 25.0% |" in md
    from eval.report import _fig_rows

    assert any(label.endswith("(two_stage, target 13%)") for label, _ in _fig_rows(runs, "bench"))


def test_alpha_json_carries_the_measured_share_beside_alpha(tmp_path):
    import importlib.util
    import json

    from medssr.records import Question, write_jsonl
    from tests.conftest import ROOT

    spec = importlib.util.spec_from_file_location("evaluate_stage", ROOT / "stages" / "evaluate.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    qs = [Question(id=f"s{i}", source="synthetic", split="train", question="q?", options={"A": "a", "B": "b"},
                   meta={"rare_tagged": "Fabry disease" if i < 3 else None}) for i in range(12)]
    write_jsonl(tmp_path / "questions.jsonl", qs)
    results = {"stage2": {"avg": 0.5, "raredis": {"avg": 0.4}}}
    stage.write_plots(results, 0.0, tmp_path / "accuracy.json", tmp_path / "alpha.json",
                      stage.rare_share_measured(tmp_path / "questions.jsonl"), None)
    rows = json.loads((tmp_path / "alpha.json").read_text())
    assert rows == [{"rare_share_measured": 0.25, "alpha": 0.0, "rare_share_target": None, "eval_avg": 0.5, "raredis_avg": 0.4}]
    import yaml

    from tests.dvc_yaml import raw_stages

    assert "--synthetic data/synthetic/questions.jsonl" in " ".join(raw_stages()["evaluate"]["cmd"].split())
    plots = {k: v for p in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"] for k, v in p.items()}
    assert plots["accuracy_vs_alpha"]["x"] == "rare_share_measured"  # dvc plots: accuracy vs the measured share
