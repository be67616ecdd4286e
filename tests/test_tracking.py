"""Tracking: one absolute store for the project, and every stage of one pipeline execution under one parent."""

import os
import signal
import subprocess
import sys
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


# ---- runs left RUNNING by a killed process (#13.1) -----------------------------------------------------------

# A child that opens a stage run, prints its id, then either SIGKILLs itself (no cleanup runs, like `kill -9` or the
# OOM killer) or holds the run open until its stdin closes (a live concurrent pipeline).
CHILD = """
import os, signal, sys
from medssr import tracking
from medssr.config import load_params
over = {"synth.rare_ratio": float(sys.argv[2])}
with tracking.stage_run("synthesize", load_params(sys.argv[1], overrides=over)) as mlflow:
    print(mlflow.active_run().info.run_id, flush=True)
    if sys.argv[3] == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.stdin.read()
"""


def _child(mode: str, rare_ratio: float = 0.25) -> tuple[subprocess.Popen, str]:
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(ROOT / "params.yaml"), str(rare_ratio), mode], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    run_id = child.stdout.readline().strip()
    assert run_id, "the child opened no run"
    if mode == "die":
        child.wait(timeout=60)
        assert child.returncode == -signal.SIGKILL
    return child, run_id


def test_a_stage_run_left_running_by_a_killed_process_is_closed_when_the_stage_starts_again(mlflow_store):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_store)
    _, dead = _child("die")
    params = load_params(ROOT / "params.yaml")
    exp = client.get_experiment_by_name(params.project.experiment)
    # what a SIGKILL leaves behind: its stage run RUNNING, and the parent never reopened, so not RUNNING with it
    assert [r.info.run_id for r in client.search_runs([exp.experiment_id]) if r.info.status == "RUNNING"] == [dead]
    with tracking.stage_run("synthesize", params) as mlflow:
        new = mlflow.active_run().info.run_id
    run = client.get_run(dead)
    assert run.info.status == "KILLED"
    assert "is gone" in run.data.tags["medssr_closed_reason"] and run.data.tags["medssr_replaced_by"] == new
    assert client.get_run(new).data.tags["medssr_replaces"] == dead
    assert [r.info.run_id for r in client.search_runs([exp.experiment_id]) if r.info.status == "RUNNING"] == []


def test_runs_of_a_live_process_or_of_another_pipeline_are_left_running(mlflow_store):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_store)
    live, live_run = _child("wait")  # `dvc queue start -j 2`: another process runs the same stage
    try:
        _, other_pipeline = _child("die", rare_ratio=0.5)  # killed, but under another parent run
        with tracking.stage_run("synthesize", load_params(ROOT / "params.yaml")):
            pass
        assert client.get_run(live_run).info.status == "RUNNING"
        assert client.get_run(other_pipeline).info.status == "RUNNING"
        assert client.get_run(live_run).data.tags["medssr_owner_pid"] == str(live.pid)
    finally:
        live.communicate("", timeout=60)
    assert client.get_run(live_run).info.status == "FINISHED"


def test_a_run_owner_is_gone_only_when_this_host_shows_it_dead():
    me = tracking.owner_tags()
    assert tracking.owner_gone(me) is None
    assert tracking.owner_gone({**me, "medssr_owner_host": "another-host"}) is None  # cannot look: leave it
    assert "now belongs to another process" in tracking.owner_gone({**me, "medssr_owner_start": "1"})
    assert "no owner recorded" in tracking.owner_gone({})  # opened by a medssr from before owner tags
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert "is gone" in tracking.owner_gone({**me, "medssr_owner_pid": str(child.pid)})
