"""MLflow in one place: the store, the experiment, the pipeline parent run and stage runs (metric names: medssr.metric_names).

Every stage of one pipeline execution nests under one parent run. The parent is found by a
``pipeline_key`` tag (DVC experiment name + git revision + params hash), so separate stage processes
launched by ``dvc repro`` meet in the same parent. The store defaults to ``<project root>/mlflow.db``
addressed by an absolute URI: DVC queued experiments run in copies under ``.dvc/tmp/exps/``, where a
relative store would be thrown away with the copy.

A SIGKILL (``kill -9``, the OOM killer) leaves a run RUNNING for ever. Each stage run therefore records its
owner (host, pid, process start time); when the stage starts again, runs of the same stage under the same parent
whose owner is gone are closed as KILLED with a tag saying why. Runs of a live process (``dvc queue start -j 2``
runs pipelines side by side), of another host, or under another parent are never touched.

What a researcher sees (#15.1): the experiment opens on its runs table (``mlflow.experimentKind``); a parent run is
named by what was swept (``α=0.25 · two_stage · smollm2-135m · <DVC experiment>``) and described by the params that
differ from the committed params.yaml; it carries only ``HEADLINE_METRICS``, one name per quantity. The stage shell
(``medssr.stage.run_stage``) opens each stage's run before the work starts (``stage_scope``), with system metrics on
long stages, and the library's ``stage_run`` logs into that run, so a run's duration is the stage's. Both yield an
``TrackingGate`` whose ``log_metric(s)`` check each name against the registry in ``medssr.metric_names``.

One gate for every write (#25): medssr reaches MLflow only through this module. ``TrackingGate`` (the fluent API on the
active run) and ``GatedClient`` (the client) expose exactly the writes medssr makes and nothing else; each passes
every string it sends (param, tag and metric keys and values, run names, descriptions, dataset names, sources and
digests, and the bytes of every artifact file, scrubbed into a temporary copy before upload) through
``medssr.secrets.scrub`` with the live secrets: the credential environment variables the backends read and every
password found in a URL among the params. tests/test_tracking.py fails any other module that imports mlflow to write.
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
from medssr.metric_names import HEADLINE_METRICS, check_names
from medssr.secrets import REDACTED, live_secrets, params_secret_findings, register_params_secrets, scrub, scrub_bytes, scrub_params

LONG_STAGES = ("corpus", "synthesize", "label", "stage1", "stage2", "evaluate")  # these get MLflow system metrics
HEADLINE_PARAMS = ("synth.rare_ratio", "train.strategy", "model.policy")
VIEW_KEY = "headline"  # the runs table with the headline columns: <ui>/#/experiments/<id>/runs?viewStateShareKey=headline
HEADLINE_VIEW = {"selectedColumns": [*(f"metrics.`{m}`" for m in HEADLINE_METRICS), *(f"params.`{p}`" for p in HEADLINE_PARAMS)],
                 "orderByKey": "attributes.start_time", "orderByAsc": False}
EXPERIMENT_TAGS = {
    "mlflow.experimentKind": "custom_model_development",  # the UI opens on the runs table, not the GenAI overview
    f"mlflow.sharedViewState.{VIEW_KEY}": json.dumps(HEADLINE_VIEW),  # a saved view MLflow's UI reads from the experiment's tags
}

STAGES = ("model", "prepare", "corpus", "synthesize", "label", "stage1", "stage2", "train", "evaluate", "report", "review")


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
    """The mlflow module, pointed at the project's store: for this module's own reads and for the gate, never handed out."""
    set_offline_env()
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow


# -- the gate: the only writer --------------------------------------------------------------------------------------

_GATE_MISS = ("the tracking gate has no {attr!r}: medssr writes to MLflow only through medssr.tracking (TrackingGate / GatedClient), "
              "which scrubs every string and artifact of credentials (#25); add the write there")
CLIENT_READS = frozenset({"get_run", "search_runs", "get_experiment", "get_experiment_by_name", "search_experiments",
                          "get_metric_history", "list_artifacts", "download_artifacts"})


def _s(value: Any) -> Any:
    """One value about to be stored, without credentials (strings, and the strings inside dicts/lists)."""
    return scrub(value, live_secrets())


def _k(name: Any, secrets: list[str] | None = None) -> Any:
    """A name MLflow stores (param, tag, metric key; artifact path) without credentials, still a valid name ('*' is not)."""
    if not isinstance(name, str):
        return name
    return scrub(name, live_secrets() if secrets is None else secrets).replace(REDACTED, "REDACTED")


def _safe_params(params: Mapping[str, Any]) -> dict[str, str]:
    secrets = live_secrets()
    return {_k(k, secrets): _param_value(scrub(v, secrets)) for k, v in scrub_params(params).items()}


def _safe_tags(tags: Mapping[str, Any] | None) -> dict[str, str]:
    secrets = live_secrets()
    return {_k(str(k), secrets): scrub(str(v), secrets) for k, v in (tags or {}).items()}


@contextlib.contextmanager
def _scrubbed_file(path: Path) -> Iterator[Path]:
    """``path``, or a scrubbed copy of it under the same name in a temporary directory when it holds a credential."""
    import tempfile

    data = path.read_bytes()
    safe = scrub_bytes(data, live_secrets())
    if safe == data:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="medssr-scrub-") as tmp:
        copy = Path(tmp) / path.name
        copy.write_bytes(safe)
        yield copy


def _upload(log_artifact: Any, local: Path, artifact_path: str | None) -> None:
    """``log_artifact(file, artifact_path)`` for a file, or for each file of a directory under ``artifact_path``/its subdir."""
    if local.is_file():
        with _scrubbed_file(local) as f:
            log_artifact(str(f), artifact_path)
        return
    for f in sorted(local.rglob("*")):
        if f.is_file():
            rel = f.parent.relative_to(local).as_posix()
            sub = "/".join(x for x in (artifact_path, "" if rel == "." else rel) if x) or None
            with _scrubbed_file(f) as g:
                log_artifact(str(g), sub)


class GatedClient:
    """``MlflowClient`` with its writes scrubbed (the ones medssr makes) and its reads (``CLIENT_READS``) passed through."""

    def __init__(self, client: Any):
        self._client = client

    def __getattr__(self, attr: str) -> Any:
        if attr in CLIENT_READS:
            return getattr(self._client, attr)
        raise AttributeError(_GATE_MISS.format(attr=attr))

    def create_experiment(self, name: str, tags: Mapping[str, Any] | None = None) -> str:
        return self._client.create_experiment(_s(name), tags=_safe_tags(tags))

    def set_experiment_tag(self, experiment_id: str, key: str, value: Any) -> None:
        self._client.set_experiment_tag(experiment_id, *_safe_tags({key: value}).popitem())

    def create_run(self, experiment_id: str, run_name: str | None = None, tags: Mapping[str, Any] | None = None) -> Any:
        return self._client.create_run(experiment_id, run_name=_s(run_name), tags=_safe_tags(tags))

    def set_tag(self, run_id: str, key: str, value: Any) -> None:
        self._client.set_tag(run_id, *_safe_tags({key: value}).popitem())

    def set_terminated(self, run_id: str, status: str | None = None) -> None:
        self._client.set_terminated(run_id, status)

    def log_batch(self, run_id: str, metrics: Any = (), params: Any = (), tags: Any = ()) -> None:
        from mlflow.entities import Metric, Param, RunTag

        metrics = [Metric(_k(m.key), m.value, m.timestamp, m.step) for m in metrics]
        check_names(m.key for m in metrics)
        params = [Param(k, v) for k, v in _safe_params({p.key: p.value for p in params}).items()]
        tags = [RunTag(k, v) for k, v in _safe_tags({t.key: t.value for t in tags}).items()]
        self._client.log_batch(run_id, metrics=metrics, params=params, tags=tags)

    def log_inputs(self, run_id: str, datasets: Any) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag

        safe = []
        for d in datasets:
            ds = d.dataset
            safe.append(DatasetInput(Dataset(name=_s(ds.name), digest=_s(ds.digest), source_type=_s(ds.source_type), source=_s(ds.source),
                                             schema=_s(ds.schema), profile=_s(ds.profile)),
                                     tags=[InputTag(_s(t.key), _s(t.value)) for t in d.tags]))
        self._client.log_inputs(run_id, datasets=safe)

    def log_artifact(self, run_id: str, local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
        _upload(lambda f, a: self._client.log_artifact(run_id, f, a), Path(local_path), _k(artifact_path))

    def log_artifacts(self, run_id: str, local_dir: str | os.PathLike, artifact_path: str | None = None) -> None:
        _upload(lambda f, a: self._client.log_artifact(run_id, f, a), Path(local_dir), _k(artifact_path))


class TrackingGate:
    """What a stage logs into its open run with: the writes medssr makes, each scrubbed; metric names checked against the
    registry (``metric_names.check_names``). Anything else raises AttributeError: no route around the scrubber."""

    def __init__(self, module: Any):
        self._m = module

    def __getattr__(self, attr: str) -> Any:
        raise AttributeError(_GATE_MISS.format(attr=attr))

    def active_run(self) -> Any:
        return self._m.active_run()

    def MlflowClient(self) -> GatedClient:  # noqa: N802 (the mlflow module's spelling, so call sites read the same)
        return GatedClient(self._m.MlflowClient())

    def _run_id(self) -> str:
        run = self._m.active_run()
        if run is None:
            raise RuntimeError("no active MLflow run: log inside tracking.stage_run / stage_scope / plain_run")
        return run.info.run_id

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        key = _k(key)
        check_names([key])
        self._m.log_metric(key, value, step=step)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        safe = {_k(k): v for k, v in metrics.items()}
        check_names(safe)
        self._m.log_metrics(safe, step=step)

    def log_param(self, key: str, value: Any) -> None:
        self.log_params({key: value})

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._m.log_params(_safe_params(params))

    def set_tag(self, key: str, value: Any) -> None:
        self._m.set_tags(_safe_tags({key: value}))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._m.set_tags(_safe_tags(tags))

    def log_text(self, text: str, artifact_file: str) -> None:
        self._m.log_text(_s(text), _k(artifact_file))

    def log_dict(self, dictionary: Any, artifact_file: str) -> None:
        self._m.log_dict(_s(dictionary), _k(artifact_file))

    def log_artifact(self, local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.MlflowClient().log_artifact(self._run_id(), local_path, artifact_path)

    def log_artifacts(self, local_dir: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.MlflowClient().log_artifacts(self._run_id(), local_dir, artifact_path)


def _client() -> GatedClient:
    return GatedClient(_mlflow().MlflowClient())


_WARNED_PARAMS: set[str] = set()


def warn_params_secrets(params_flat: Mapping[str, Any]) -> list[str]:
    """Register the params' URL passwords as live secrets; say once per process, one line each, which params carry a
    credential (a git-tracked secret) and which environment variable to use instead. Returns the new lines."""
    import sys

    register_params_secrets(params_flat)
    lines = [line for line in params_secret_findings(params_flat) if line not in _WARNED_PARAMS]
    for line in lines:
        _WARNED_PARAMS.add(line)
        print(f"[medssr] warning: {line}", file=sys.stderr)
    return lines


def ensure_experiment(name: str) -> str:
    """The experiment's id (created when missing), tagged so the MLflow UI opens it on the runs table."""
    client = _client()
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, tags=EXPERIMENT_TAGS)
        except Exception:  # a concurrent stage created it first
            exp = client.get_experiment_by_name(name)
    if any(exp.tags.get(k) != v for k, v in EXPERIMENT_TAGS.items()):
        for k, v in EXPERIMENT_TAGS.items():
            client.set_experiment_tag(exp.experiment_id, k, v)
    return exp.experiment_id


def parent_run_id(experiment: str, params_flat: Mapping[str, Any]) -> str:
    """Find or create the pipeline's parent run, tagged with the DVC experiment name and git revision."""
    mlflow = _mlflow()
    warn_params_secrets(params_flat)
    exp_id = ensure_experiment(experiment)
    key = pipeline_key(params_flat)
    client = _client()
    found = client.search_runs([exp_id], filter_string=f"tags.medssr_pipeline_key = '{key}'", max_results=1)
    if found:
        if found[0].info.status == "RUNNING":  # reopened by a stage of an older medssr and left so by a kill
            client.set_terminated(found[0].info.run_id, "FINISHED")
        return found[0].info.run_id
    exp_name = os.environ.get("DVC_EXP_NAME", "workspace")
    baseline = baseline_params()
    changed = changed_params(params_flat, baseline) if baseline else None
    run = client.create_run(exp_id, run_name=run_name(params_flat, exp_name), tags={
        "medssr_pipeline_key": key, "medssr_role": "pipeline", "dvc_exp_name": exp_name,
        "git_revision": git_revision(), "mlflow.source.name": "dvc repro",
        "mlflow.note.content": describe(params_flat, changed, exp_name),
        "medssr_changed_params": json.dumps(sorted(changed or {}))[:5000],
    })
    flat = _safe_params(params_flat)
    for chunk in _chunks(list(flat.items()), 90):
        client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, v) for k, v in chunk])
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def run_name(params_flat: Mapping[str, Any], exp_name: str = "workspace") -> str:
    """``α=0.25 · two_stage · smollm2-135m`` (+ ``· <DVC experiment>``): what a sweep varies, readable in the runs table."""
    alpha = params_flat.get("synth.rare_ratio")
    parts = [f"α={alpha:g}" if isinstance(alpha, (int, float)) else f"α={alpha}", str(params_flat.get("train.strategy", "?")),
             Path(str(params_flat.get("model.policy", "?"))).name]
    if exp_name and exp_name != "workspace":
        parts.append(exp_name)
    return " · ".join(parts)


def baseline_params(root: Path | None = None) -> dict[str, Any] | None:
    """The committed params.yaml (git HEAD; in a DVC experiment copy, the experiment's baseline), flattened; None if unknown."""
    import yaml

    try:
        out = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=root or workspace_root(), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    try:
        raw = yaml.safe_load(out.stdout)
    except yaml.YAMLError:
        return None
    return _flatten(raw) if isinstance(raw, dict) else None


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    return json.dumps(a, default=str, sort_keys=True) == json.dumps(b, default=str, sort_keys=True)


def changed_params(params_flat: Mapping[str, Any], baseline: Mapping[str, Any] | None = None) -> dict[str, tuple[Any, Any]]:
    """{key: (committed value, this run's value)} for the params this run changes against the committed params.yaml."""
    base = baseline_params() if baseline is None else baseline
    if not base:
        return {}
    flat = _flatten(params_flat)
    return {k: (base.get(k), v) for k, v in sorted(flat.items()) if k in base and not _same(base[k], v)}


def describe(params_flat: Mapping[str, Any], changed: Mapping[str, tuple[Any, Any]] | None, exp_name: str = "workspace") -> str:
    """The parent run's description (markdown, the run page's Description box); ``changed`` None: no committed params.yaml."""
    lines = [f"**{run_name(params_flat, exp_name)}**", "",
             f"α (synth.rare_ratio) = {params_flat.get('synth.rare_ratio')}, strategy (train.strategy) = "
             f"{params_flat.get('train.strategy')}, policy (model.policy) = {params_flat.get('model.policy')}", ""]
    if changed:
        lines.append("Params changed from the committed params.yaml:")
        lines += [f"- `{k}`: {json.dumps(a, default=str)} → {json.dumps(b, default=str)}" for k, (a, b) in changed.items()]
    elif changed is None:
        lines.append("No committed params.yaml to compare with (not a git checkout): every param is in the Parameters table.")
    else:
        lines.append("Params as committed in params.yaml.")
    lines += ["", f"Headline metrics: {', '.join(HEADLINE_METRICS)}. Per-stage numbers, curves and artifacts are on the nested stage runs."]
    return "\n".join(lines)


def _param_value(v: Any) -> str:
    s = json.dumps(v, default=str) if not isinstance(v, str) else v
    return s[:6000]


def _chunks(xs: list, n: int) -> Iterator[list]:
    for i in range(0, len(xs), n):
        yield xs[i : i + n]


_SCOPED: dict[str, str] = {}  # stage -> id of the run stage_scope holds open in this process


@contextlib.contextmanager
def stage_run(stage: str, params: Any, section: Mapping[str, Any] | None = None) -> Iterator[Any]:
    """The MLflow run of one stage, nested under the pipeline parent run; yields its ``TrackingGate`` (every write
    scrubbed of credentials, ``log_metric(s)`` checking names against ``medssr.metric_names``).

    Inside ``stage_scope`` of the same stage (the stage shell opened it before the work) that run is reused: the
    section params are logged into it and it stays open. Otherwise a run is opened here and closed on exit.
    ``params`` is the validated Params; ``section`` the flat params this stage depends on (logged on the run).
    Runs of this stage left RUNNING by a dead process are closed first (see ``close_dead_runs``). The parent is
    named, not reopened: an active parent would be left RUNNING too by a kill.
    """
    mlflow = _mlflow()
    active = mlflow.active_run()
    if active is not None and _SCOPED.get(stage) == active.info.run_id:
        if section:
            _log_new_params(mlflow, active.info.run_id, section)
        yield TrackingGate(mlflow)
        return
    with _open_stage_run(mlflow, stage, params) as run:
        if section:
            _log_new_params(mlflow, run.info.run_id, section)
        yield TrackingGate(mlflow)


def _log_new_params(mlflow: Any, run_id: str, section: Mapping[str, Any]) -> None:
    """Log ``section`` on the run, less keys it already holds (MLflow refuses to change a logged param)."""
    warn_params_secrets(section)
    have = mlflow.MlflowClient().get_run(run_id).data.params
    new = {k: v for k, v in _safe_params(section).items() if k not in have}
    for chunk in _chunks(list(new.items()), 90):
        TrackingGate(mlflow).log_params(dict(chunk))


@contextlib.contextmanager
def _open_stage_run(mlflow: Any, stage: str, params: Any, system_metrics: bool = False) -> Iterator[Any]:
    from medssr.config import to_flat_dict

    flat = to_flat_dict(params)
    parent = parent_run_id(params.project.experiment, flat)  # registers the params' URL passwords as live secrets
    exp_id = ensure_experiment(params.project.experiment)
    mlflow.set_experiment(experiment_id=exp_id)
    closed = close_dead_runs(exp_id, parent, stage)
    tags = {"medssr_role": "stage", "medssr_stage": stage, "dvc_exp_name": os.environ.get("DVC_EXP_NAME", "workspace"), **owner_tags()}
    if closed:
        tags["medssr_replaces"] = ",".join(closed)
    if system_metrics:
        mlflow.set_system_metrics_sampling_interval(system_metrics_interval())
    with mlflow.start_run(run_name=_s(stage), parent_run_id=parent, tags=_safe_tags(tags), log_system_metrics=system_metrics) as run:
        for run_id in closed:
            _client().set_tag(run_id, "medssr_replaced_by", run.info.run_id)
        yield run


def system_metrics_interval() -> float:
    """Seconds between MLflow system-metric samples (``MEDSSR_SYSTEM_METRICS_INTERVAL_S``, default 10)."""
    return float(os.environ.get("MEDSSR_SYSTEM_METRICS_INTERVAL_S", "10"))


def system_metrics_available() -> bool:
    """MLflow samples CPU/memory (and GPU) only with psutil installed."""
    import importlib.util

    return importlib.util.find_spec("psutil") is not None


@contextlib.contextmanager
def stage_scope(stage: str, params: Any) -> Iterator[Any]:
    """Hold the stage's MLflow run open around the whole stage: FINISHED on return, FAILED on an exception.

    The library's ``stage_run(stage, ...)`` calls inside reuse it, so the run's start and end are the stage's.
    Long stages (``LONG_STAGES``) sample system metrics (CPU, memory, GPU) every ``system_metrics_interval()`` s.
    """
    mlflow = _mlflow()
    system = stage in LONG_STAGES and system_metrics_available()
    with _open_stage_run(mlflow, stage, params, system_metrics=system) as run:  # start_run's exit marks FAILED on errors
        _SCOPED[stage] = run.info.run_id
        try:
            yield TrackingGate(mlflow)
        finally:
            _SCOPED.pop(stage, None)
    # the parent's end time follows its last stage, so its Duration is the pipeline's, not the instant it was created
    parent = run.data.tags.get("mlflow.parentRunId")
    if parent:
        _client().set_terminated(parent, "FINISHED")


def log_stage_artifacts(stage: str, paths: Any, artifact_path: str | None = None) -> int:
    """Log existing files/directories onto the open run of ``stage`` (see ``stage_scope``); returns how many were logged."""
    run_id = _SCOPED.get(stage)
    if run_id is None:
        return 0
    client = _client()
    n = 0
    for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths):
        p = Path(p)
        if p.is_dir() and any(p.iterdir()):
            client.log_artifacts(run_id, str(p), artifact_path or p.name)
            n += 1
        elif p.is_file():
            client.log_artifact(run_id, str(p), artifact_path)
            n += 1
    return n


def log_dataset_inputs(stage: str, files: Mapping[str, Any], context: str = "training") -> list[str]:
    """Log JSONL data files as the open stage run's dataset inputs ({name: path}), each with a sha256 digest of its bytes."""
    run_id = _SCOPED.get(stage)
    if run_id is None:
        return []
    mlflow = _mlflow()
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import InputTag

    inputs, logged = [], []
    for name, path in files.items():
        p = Path(path)
        if not p.is_file():
            continue
        digest = file_digest(p)
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": both readings are the local file
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(p.resolve().as_uri())
        ds = MetaDataset(source=source, name=name, digest=digest[:36])
        entity = ds._to_mlflow_entity()
        inputs.append(mlflow.entities.DatasetInput(entity, tags=[InputTag("mlflow.data.context", context)]))
        logged.append(name)
    if inputs:
        _client().log_inputs(run_id, datasets=inputs)
    return logged


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
    client = _client()
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
    """Copy the headline metrics among ``metrics`` (``HEADLINE_METRICS``) onto the parent run, so the runs table and
    the compare view show a whole sweep side by side; every other number stays on its stage run."""
    from medssr.config import to_flat_dict

    mlflow = _mlflow()
    parent = parent_run_id(params.project.experiment, to_flat_dict(params))
    client = _client()
    items = [(k, float(metrics[k])) for k in HEADLINE_METRICS
             if isinstance(metrics.get(k), (int, float)) and not isinstance(metrics.get(k), bool) and metrics[k] == metrics[k]]
    check_names(k for k, _ in items)
    for chunk in _chunks(items, 500):
        client.log_batch(parent, metrics=[mlflow.entities.Metric(k, v, _now_ms(), 0) for k, v in chunk])


def log_parent_artifacts(params: Any, paths: Any, artifact_path: str | None = None) -> None:
    """Log files/directories (the report, its figures) onto the pipeline's parent run, where a reader opens first."""
    from medssr.config import to_flat_dict

    parent = parent_run_id(params.project.experiment, to_flat_dict(params))
    client = _client()
    for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths):
        p = Path(p)
        if p.is_dir() and any(p.iterdir()):
            client.log_artifacts(parent, str(p), artifact_path or p.name)
        elif p.is_file():
            client.log_artifact(parent, str(p), artifact_path)


def set_parent_tags(params: Any, tags: Mapping[str, Any]) -> None:
    """Tags on the pipeline's parent run (e.g. which metric prefixes are evaluated checkpoints, for the report)."""
    from medssr.config import to_flat_dict

    parent = parent_run_id(params.project.experiment, to_flat_dict(params))
    client = _client()
    for k, v in tags.items():
        client.set_tag(parent, k, v)


@contextlib.contextmanager
def plain_run(experiment: str, run_name: str, tags: Mapping[str, Any] | None = None) -> Iterator[tuple[TrackingGate, str]]:
    """A top-level run outside the pipeline (e.g. ``medssr review import``): yields its gate and run id."""
    exp_id = ensure_experiment(experiment)
    mlflow = _mlflow()
    with mlflow.start_run(experiment_id=exp_id, run_name=_s(run_name), tags=_safe_tags(tags)) as run:
        yield TrackingGate(mlflow), run.info.run_id


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
