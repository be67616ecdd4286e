"""MLflow in one place: the store, the experiment, the pipeline parent run, stage runs and metric names.

Every stage of one pipeline execution nests under one parent run. The parent is found by a
``pipeline_key`` tag (DVC experiment name + git revision + params hash), so separate stage processes
launched by ``dvc repro`` meet in the same parent. The store defaults to ``<project root>/mlflow.db``
addressed by an absolute URI: DVC queued experiments run in copies under ``.dvc/tmp/exps/``, where a
relative store would be thrown away with the copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
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
    """
    from medssr.config import to_flat_dict

    mlflow = _mlflow()
    flat = to_flat_dict(params)
    parent = parent_run_id(params.project.experiment, flat)
    mlflow.set_experiment(params.project.experiment)
    with mlflow.start_run(run_id=parent):
        with mlflow.start_run(run_name=stage, nested=True, tags={"medssr_role": "stage", "medssr_stage": stage,
                                                                  "dvc_exp_name": os.environ.get("DVC_EXP_NAME", "workspace")}) as run:
            if section:
                mlflow.log_params({k: _param_value(v) for k, v in scrub_params(section).items()})
            yield mlflow
            _ = run


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
