"""Tracking: one absolute store for the project, and every stage of one pipeline execution under one parent."""

from pathlib import Path

from medssr import tracking
from medssr.config import load_params

ROOT = Path(__file__).resolve().parents[1]


def test_project_root_sees_through_dvc_temp_experiment_copies(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDSSR_ROOT", raising=False)
    copy = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpabc123"
    copy.mkdir(parents=True)
    (copy / "dvc.yaml").write_text("stages: {}\n")
    assert tracking.project_root(copy) == tmp_path / "repo"


def test_default_store_is_an_absolute_sqlite_uri_in_the_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MEDSSR_ROOT", str(tmp_path))
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"
    assert tracking.tracking_uri().startswith("sqlite:////")


def test_stage_runs_of_one_pipeline_share_a_parent(mlflow_store, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("DVC_EXP_NAME", "exp-a")
    params = load_params(ROOT / "params.yaml")
    for stage in ("prepare", "synthesize"):
        with tracking.stage_run(stage, params, {"x": 1}) as mlflow:
            mlflow.log_metric(tracking.metric(stage, "rows"), 3)
    other = load_params(ROOT / "params.yaml", overrides={"synth.rare_ratio": 0.5})
    with tracking.stage_run("synthesize", other) as mlflow:
        mlflow.log_metric("synthesize/rows", 4)
    tracking.log_summary_to_parent(params, {"eval/avg": 0.5})

    client = MlflowClient()
    exp = client.get_experiment_by_name(params.project.experiment)
    parents = client.search_runs([exp.experiment_id], "tags.medssr_role = 'pipeline'")
    assert len(parents) == 2
    first = [r for r in parents if r.data.params["synth.rare_ratio"] == "0.25"][0]
    assert first.data.tags["dvc_exp_name"] == "exp-a" and first.data.tags["git_revision"]
    assert first.data.metrics["eval/avg"] == 0.5
    kids = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{first.info.run_id}'")
    assert sorted(r.data.tags["medssr_stage"] for r in kids) == ["prepare", "synthesize"]
    assert all(r.info.status == "FINISHED" for r in kids)


def test_metric_names_are_stable():
    assert tracking.eval_metric("medqa") == "eval/medqa/acc"
    assert tracking.raredis_metric("Related disorders") == "eval/raredis/related_disorders/acc"
    assert tracking.metric("label", "agreement_mean") == "label/agreement_mean"


def test_workspace_root_stays_in_the_dvc_queue_copy(tmp_path, monkeypatch):
    """Files (params, data, checkpoints) come from the copy a queued experiment runs in; only shared state
    (the MLflow store, caches) goes to the real project root."""
    monkeypatch.delenv("MEDSSR_ROOT", raising=False)
    copy = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpabc123"
    (copy / "stages").mkdir(parents=True)
    (copy / "dvc.yaml").write_text("stages: {}\n")
    assert tracking.workspace_root(copy / "stages") == copy
    assert tracking.project_root(copy / "stages") == tmp_path / "repo"
