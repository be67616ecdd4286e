"""The MLflow UI on loopback: one way to start ``mlflow server`` on a store, wait until it answers, and stop it.

``medssr ui`` uses it to open the project's runs (with the headline view of ``medssr.tracking``), the screenshot script
and the sweep test use it on their own stores. It binds 127.0.0.1 only: nothing is served beyond this machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def mlflow_executable() -> str:
    """The ``mlflow`` of this interpreter's environment (a venv's bin/ need not be on PATH)."""
    here = Path(sys.executable).parent / "mlflow"
    return str(here) if here.exists() else (shutil.which("mlflow") or "mlflow")


class ServerError(RuntimeError):
    pass


@contextlib.contextmanager
def mlflow_server(store_uri: str, artifacts: str | os.PathLike, log: str | os.PathLike, port: int | None = None,
                  env: Mapping[str, str] | None = None, timeout_s: float = 120.0) -> Iterator[str]:
    """Run ``mlflow server`` on ``store_uri`` (artifacts served from ``artifacts``) and yield its base URL once /health
    answers; the server (its whole process group) is stopped when the block ends. Its output goes to ``log``."""
    port = port or free_port()
    env = {**os.environ, **(env or {}), "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    Path(artifacts).mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        server = subprocess.Popen([mlflow_executable(), "server", "--host", HOST, "--port", str(port), "--workers", "1",
                                   "--backend-store-uri", store_uri, "--artifacts-destination", str(Path(artifacts).resolve())],
                                  env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while not _healthy(base):
            if server.poll() is not None or time.monotonic() > deadline:
                raise ServerError(f"mlflow server on {store_uri} did not come up within {timeout_s:.0f} s "
                                  f"(exit {server.poll()}); its log {log}:\n{Path(log).read_text()[-2000:]}")
            time.sleep(0.5)
        yield base
    finally:
        _stop(server)


def _healthy(base: str) -> bool:
    try:
        return urllib.request.urlopen(f"{base}/health", timeout=2).read() == b"OK"
    except OSError:
        return False


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM the server's process group (mlflow server forks its workers), SIGKILL what is left after 20 s."""
    if server.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=20)


def api(base: str, path: str, body: Mapping[str, Any] | None = None) -> dict:
    """One call of the server's REST API (``path`` after ``/api/2.0/mlflow/``); GET without ``body``, POST with it."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{base}/api/2.0/mlflow/{path}", data=data, headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=20).read())


def experiment_id(base: str, name: str) -> str:
    return api(base, f"experiments/get-by-name?experiment_name={urllib.parse.quote(name)}")["experiment"]["experiment_id"]


WORKFLOW_PARAM = "workflowType=machine_learning"  # MLflow 3.17's UI reads it before its per-browser GenAI/Model training switch


def runs_table_url(base: str, exp_id: str) -> str:
    """The experiment's *Model training* runs table with the headline columns (the view ``medssr.tracking`` stores on
    the experiment). Without ``workflowType`` a fresh browser opens the GenAI page, and its *Model training* switch
    navigates to ``?workflowType=…`` alone, dropping the view; the Assistant panel's state has no URL parameter."""
    from medssr.tracking import VIEW_KEY

    return f"{base}/#/experiments/{exp_id}/runs?{WORKFLOW_PARAM}&viewStateShareKey={VIEW_KEY}"


class _Stopped(Exception):
    """Raised by the SIGTERM/SIGHUP handler of ``serve`` so the server's process group is stopped on the way out."""


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _raise_stopped(signum: int, _frame: Any) -> None:
    for s in STOP_SIGNALS:  # a second signal must not interrupt the stop itself
        signal.signal(s, signal.SIG_IGN)
    raise _Stopped(signal.Signals(signum).name)


def serve(store_uri: str, artifacts: str | os.PathLike, experiment: str, port: int | None, log: str | os.PathLike) -> int:
    """``medssr ui``: serve the store until Ctrl-C, SIGTERM or SIGHUP, printing the runs-table link.

    The server runs in its own session (so a terminal's Ctrl-C reaches it only through us); Python's default SIGTERM
    and SIGHUP would end this process without the ``finally`` that stops it, leaving ``mlflow server`` and its uvicorn
    workers on the port, so both signals are turned into an exception that unwinds through ``mlflow_server``."""
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    previous = {s: signal.signal(s, _raise_stopped) for s in STOP_SIGNALS}
    try:
        with mlflow_server(store_uri, artifacts, log, port=port) as base:
            try:
                where = runs_table_url(base, experiment_id(base, experiment))
            except (OSError, KeyError, ValueError):
                where = f"{base}  (no experiment {experiment!r} in {store_uri} yet: run a stage first)"
            print(f"[ui] MLflow UI of {store_uri}: {where}\n[ui] Ctrl-C stops it (server log: {log})", flush=True)
            while True:
                time.sleep(3600)
    except (KeyboardInterrupt, _Stopped):
        pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0
