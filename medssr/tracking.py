"""MLflow in one place: the store, the experiment, the pipeline parent run, stage runs and metric names.

Every stage of one pipeline execution nests under one parent run. The parent is found by a
``pipeline_key`` tag (DVC experiment name + git revision + params hash), so separate stage processes
launched by ``dvc repro`` meet in the same parent. The store defaults to ``<project root>/mlflow.db``
addressed by an absolute URI: DVC queued experiments run in copies under ``.dvc/tmp/exps/``, where a
relative store would be thrown away with the copy.

A SIGKILL (``kill -9``, the OOM killer) leaves a run RUNNING for ever. Each stage run therefore records its
owner (host, pid, process start time); when the stage starts again, runs of the same stage under the same parent
whose owner is gone are closed as KILLED with a tag saying why. Runs of a live process (``dvc queue start -j 2``
runs pipelines side by side), of another host, or under another parent are never touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from medssr.config import set_offline_env
from medssr.secrets import scrub_params

STAGES = ("model", "prepare", "corpus", "synthesize", "label", "stage1", "stage2", "train", "evaluate", "report", "review")


def metric(stage: str, name: str) -> str:
    """The stable metric name ``<stage>/<name>`` (e.g. ``label/agreement_mean``, ``eval/medqa/acc``)."""
    return f"{stage}/{name}"


def eval_metric(benchmark: str, what: str = "acc") -> str:
    return f"eval/{benchmark}/{what}"


def raredis_metric(category: str) -> str:
    return f"eval/raredis/{category.lower().replace(' ', '_')}/acc"


def project_root(start: str | os.PathLike | None = None) -> Path:
    """The repository root, seen through DVC's temporary experiment copies to the real one."""
    if os.environ.get("MEDSSR_ROOT"):
        return Path(os.environ["MEDSSR_ROOT"]).resolve()
    here = Path(start or os.getcwd()).resolve()
    parts = here.parts
    if ".dvc" in parts:
        i = parts.index(".dvc")
        if parts[i + 1 : i + 3] == ("tmp", "exps"):
            return Path(*parts[:i])
    for p in (here, *here.parents):
        if (p / "dvc.yaml").exists() or (p / ".git").exists():
            return p
    return here


def workspace_root(start: str | os.PathLike | None = None) -> Path:
    """The checkout a stage runs in (a DVC queue copy included): home of params, prompts, data and checkpoints.

    ``project_root`` is for state shared across experiments (the MLflow store, caches); this is for files.
    ``MEDSSR_ROOT`` overrides both.
    """
    if os.environ.get("MEDSSR_ROOT"):
        return Path(os.environ["MEDSSR_ROOT"]).resolve()
    here = Path(start or os.getcwd()).resolve()
    for p in (here, *here.parents):
        if (p / "dvc.yaml").exists() or (p / ".git").exists():
            return p
    return here


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else an absolute sqlite URI to ``mlflow.db`` in the project root."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{project_root() / 'mlflow.db'}"


def git_revision(root: Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root or project_root(), capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "nogit"
    except (OSError, subprocess.SubprocessError):
        return "nogit"


def pipeline_key(params_flat: Mapping[str, Any]) -> str:
    """Identity of one pipeline execution: experiment name, git revision, and the params."""
    blob = json.dumps({k: params_flat[k] for k in sorted(params_flat)}, default=str, sort_keys=True)
    h = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return f"{os.environ.get('DVC_EXP_NAME', 'workspace')}:{git_revision()[:12]}:{h}"


def _mlflow():
    set_offline_env()
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow


def ensure_experiment(name: str) -> str:
    mlflow = _mlflow()
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return mlflow.create_experiment(name)
    except Exception:  # a concurrent stage created it first
        return mlflow.get_experiment_by_name(name).experiment_id


def parent_run_id(experiment: str, params_flat: Mapping[str, Any]) -> str:
    """Find or create the pipeline's parent run, tagged with the DVC experiment name and git revision."""
    mlflow = _mlflow()
    from mlflow.tracking import MlflowClient

    exp_id = ensure_experiment(experiment)
    key = pipeline_key(params_flat)
    client = MlflowClient()
    found = client.search_runs([exp_id], filter_string=f"tags.medssr_pipeline_key = '{key}'", max_results=1)
    if found:
        if found[0].info.status == "RUNNING":  # reopened by a stage of an older medssr and left so by a kill
            client.set_terminated(found[0].info.run_id, "FINISHED")
        return found[0].info.run_id
    exp_name = os.environ.get("DVC_EXP_NAME", "workspace")
    run = client.create_run(exp_id, run_name=f"pipeline-{exp_name}", tags={
        "medssr_pipeline_key": key, "medssr_role": "pipeline", "dvc_exp_name": exp_name,
        "git_revision": git_revision(), "mlflow.source.name": "dvc repro",
    })
    flat = {k: _param_value(v) for k, v in scrub_params(params_flat).items()}
    for chunk in _chunks(list(flat.items()), 90):
        client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, v) for k, v in chunk])
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def _param_value(v: Any) -> str:
    s = json.dumps(v, default=str) if not isinstance(v, str) else v
    return s[:6000]


def _chunks(xs: list, n: int) -> Iterator[list]:
    for i in range(0, len(xs), n):
        yield xs[i : i + n]


@contextlib.contextmanager
def stage_run(stage: str, params: Any, section: Mapping[str, Any] | None = None) -> Iterator[Any]:
    """Open the MLflow run of one stage, nested under the pipeline parent run; yields the mlflow module.

    ``params`` is the validated Params; ``section`` the flat params this stage depends on (logged on the run).
    Runs of this stage left RUNNING by a dead process are closed first (see ``close_dead_runs``). The parent is
    named, not reopened: an active parent would be left RUNNING too by a kill.
    """
    from medssr.config import to_flat_dict

    mlflow = _mlflow()
    flat = to_flat_dict(params)
    parent = parent_run_id(params.project.experiment, flat)
    exp_id = mlflow.set_experiment(params.project.experiment).experiment_id
    closed = close_dead_runs(exp_id, parent, stage)
    tags = {"medssr_role": "stage", "medssr_stage": stage, "dvc_exp_name": os.environ.get("DVC_EXP_NAME", "workspace"), **owner_tags()}
    if closed:
        tags["medssr_replaces"] = ",".join(closed)
    with mlflow.start_run(run_name=stage, parent_run_id=parent, tags=tags) as run:
        for run_id in closed:
            mlflow.MlflowClient().set_tag(run_id, "medssr_replaced_by", run.info.run_id)
        if section:
            mlflow.log_params({k: _param_value(v) for k, v in scrub_params(section).items()})
        yield mlflow


def owner_tags() -> dict[str, str]:
    """Who owns a run: host, pid and the pid's start time (so a reused pid is not taken for the owner)."""
    pid = os.getpid()
    return {"medssr_owner_host": socket.gethostname(), "medssr_owner_pid": str(pid), "medssr_owner_start": _process_start(pid) or ""}


def _process_start(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (Linux ``/proc``); None where it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the command name before ")" may hold spaces


def owner_gone(tags: Mapping[str, str]) -> str | None:
    """Why the process that opened a run is certainly dead, or None when it may live (or lives on another host)."""
    pid, host = tags.get("medssr_owner_pid"), tags.get("medssr_owner_host")
    if pid is None:  # opened by a medssr older than owner tags: same parent means same git revision, so no live owner
        return "no owner recorded (opened before medssr recorded run owners)"
    if host != socket.gethostname() or not pid.isdigit():
        return None  # cannot see another host's processes: leave its runs alone
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return f"owner process {pid} on {host} is gone"
    except PermissionError:  # alive, owned by another user
        pass
    start = tags.get("medssr_owner_start")
    now = _process_start(int(pid))
    if start and now and now != start:
        return f"owner process {pid} on {host} is gone (the pid now belongs to another process)"
    return None


def close_dead_runs(experiment_id: str, parent: str, stage: str) -> list[str]:
    """Mark KILLED the RUNNING runs of ``stage`` under ``parent`` whose owner process is dead; returns their ids."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    running = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}' and "
                                 f"tags.medssr_stage = '{stage}' and attributes.status = 'RUNNING'")
    closed = []
    for run in running:
        why = owner_gone(run.data.tags)
        if why is None:
            continue
        client.set_tag(run.info.run_id, "medssr_closed_reason", f"{why}; closed when {stage} started again in pid {os.getpid()}")
        client.set_terminated(run.info.run_id, "KILLED")
        closed.append(run.info.run_id)
    return closed


def log_summary_to_parent(params: Any, metrics: Mapping[str, float]) -> None:
    """Copy headline metrics onto the parent run, so the compare view shows a whole sweep side by side."""
    from medssr.config import to_flat_dict

    mlflow = _mlflow()
    from mlflow.tracking import MlflowClient

    parent = parent_run_id(params.project.experiment, to_flat_dict(params))
    client = MlflowClient()
    items = [(k, float(v)) for k, v in metrics.items() if isinstance(v, (int, float)) and v == v]
    for chunk in _chunks(items, 500):
        client.log_batch(parent, metrics=[mlflow.entities.Metric(k, v, _now_ms(), 0) for k, v in chunk])


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
