"""`medssr ui` and medssr.mlflow_ui: a real `mlflow server` on 127.0.0.1 over a real store, stopped cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from medssr import tracking
from medssr.config import load_params
from medssr.mlflow_ui import ServerError, api, experiment_id, mlflow_server

ROOT = Path(__file__).resolve().parents[1]


def test_the_server_serves_the_store_and_stops_with_its_workers(mlflow_store, tmp_path):
    params = load_params(ROOT / "params.yaml")
    with tracking.stage_run("prepare", params, {"data.max_seeds": 3}) as mlflow:
        mlflow.log_metric("prepare/seeds", 3)
    with mlflow_server(mlflow_store, tmp_path / "art", tmp_path / "server.log", timeout_s=90) as base:
        exp = experiment_id(base, params.project.experiment)
        runs = api(base, "runs/search", {"experiment_ids": [exp], "filter": "tags.medssr_stage = 'prepare'"})["runs"]
        assert [m["value"] for m in runs[0]["data"]["metrics"]] == [3]
        assert b"<html" in urllib.request.urlopen(base, timeout=10).read().lower()
        port = int(base.rsplit(":", 1)[1])
    with pytest.raises(OSError):  # nothing listens any more
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)


def test_a_server_that_cannot_start_is_an_error_with_its_log(tmp_path):
    with pytest.raises(ServerError, match="did not come up") as e:
        with mlflow_server("notascheme://nowhere", tmp_path / "art", tmp_path / "server.log", timeout_s=60):
            pass
    assert "server.log" in str(e.value)


def _start_ui(tmp_path: Path) -> tuple[subprocess.Popen, str]:
    """`medssr ui --port 0` in its own session over the current store; returns it and its `[ui] MLflow UI of` line."""
    env = {**os.environ, "MEDSSR_ROOT": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "medssr.cli", "ui", "--port", "0", "--params", str(ROOT / "params.yaml")],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    line = ""
    while "MLflow UI of" not in line:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(line + (proc.stdout.read() if proc.poll() is not None else ""))
        line = proc.stdout.readline()
    return proc, line


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc: mlflow server, uvicorn and its workers sit in other sessions)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_medssr_ui_stops_the_server_and_its_workers_on(signum, mlflow_store, tmp_path):
    params = load_params(ROOT / "params.yaml")
    with tracking.stage_run("prepare", params):
        pass
    proc, line = _start_ui(tmp_path)
    below = _descendants(proc.pid)
    try:
        base = re.search(r"http://127\.0\.0\.1:\d+", line).group(0)
        assert below, "mlflow server runs as a child of medssr ui"
        os.kill(proc.pid, signum)  # the process only, as `kill -TERM <pid>` does
        assert proc.wait(timeout=30) == 0
        deadline = time.monotonic() + 10
        while any(map(_alive, below)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in below if _alive(p)], "processes of the server left running"
        with pytest.raises(OSError):  # nothing listens on the port
            urllib.request.urlopen(f"{base}/health", timeout=2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in filter(_alive, below):  # what the old code left behind
            os.kill(pid, signal.SIGKILL)


def test_medssr_ui_prints_the_runs_table_link_and_stops_on_ctrl_c(mlflow_store, tmp_path):
    params = load_params(ROOT / "params.yaml")
    with tracking.stage_run("prepare", params):
        pass
    proc, line = _start_ui(tmp_path)
    try:
        url = re.search(r"(http://127\.0\.0\.1:\d+)/#/experiments/(\d+)/runs\?workflowType=machine_learning&viewStateShareKey=headline",
                        line)
        assert url, line
        assert urllib.request.urlopen(f"{url.group(1)}/health", timeout=10).read() == b"OK"
        assert experiment_id(url.group(1), params.project.experiment) == url.group(2)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        with pytest.raises(OSError):  # the server went with it
            urllib.request.urlopen(f"{url.group(1)}/health", timeout=2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_the_installed_mlflow_ui_reads_the_links_workflow_type():
    """The link's ``workflowType`` is a parameter MLflow's bundled frontend reads (a newer MLflow may rename it)."""
    import mlflow

    from medssr.mlflow_ui import WORKFLOW_PARAM

    key, value = WORKFLOW_PARAM.split("=")
    bundle = next((Path(mlflow.__file__).parent / "server/js/build/static/js").glob("main.*.js")).read_text()
    assert f'.get("{key}")' in bundle and f'"{value}"' in bundle
