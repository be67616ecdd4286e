"""Shared fixtures: offline switches, a tiny random Llama with SmolLM2's real tokenizer, an isolated MLflow store."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from medssr.config import set_offline_env

set_offline_env()
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# torch's OpenMP threads busy-wait by default: on a shared 2-core box that made subprocess tests ~9x slower
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# a stage that reads a param its dvc.yaml entry does not declare, or logs a metric name medssr.metric_names does not
# register, fails in every test (and in the stage subprocesses and `dvc repro`s they start); users get a warning
os.environ["MEDSSR_STRICT"] = "1"

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "data" / "raw"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer random Llama (hidden 64) saved with SmolLM2's tokenizer and chat template."""
    from medssr.models import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from threads; on a busy 2-core machine two OpenMP threads made them ~20x slower.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def smol_model_dir() -> Path:
    """The real SmolLM2-135M-Instruct, converted once from the wheel's GGUF (for slow tests)."""
    from medssr.models import resolve_model_dir

    return Path(resolve_model_dir("smollm2-135m"))


@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory) -> Path:
    """One sqlite store with MLflow's tables already created (creating them costs seconds per store)."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch, _mlflow_template) -> str:
    """A fresh sqlite MLflow store for one test (a copy of the template); returns its tracking URI."""
    import shutil

    shutil.copyfile(_mlflow_template, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="module")
def mlflow_module_store(tmp_path_factory, _mlflow_template):
    """One store (a template copy) shared by a module's tests, for modules whose tests each read only their own runs."""
    import shutil

    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    shutil.copyfile(_mlflow_template, db)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
        yield f"sqlite:///{db}"


@pytest.fixture
def raw_dir() -> Path:
    return RAW


def require_engine_env(python: Path, require_var: str, how: str) -> None:
    """Skip an engine test when its environment's interpreter is missing, or fail when ``require_var`` is "1" (CI)."""
    if python.exists():
        return
    msg = f"{python} not found: run `{how}`"
    if os.environ.get(require_var) == "1":
        pytest.fail(f"{require_var}=1 but {msg}", pytrace=False)
    pytest.skip(msg)



@pytest.fixture(autouse=True)
def _mlflow_isolation(monkeypatch, tmp_path_factory):
    """Keep MLflow writes of one test out of every other test's store and out of the project's own ``mlflow.db``.

    A test that asks for no store still gets one (shared, never read); MLflow's process-global tracking URI,
    which ``medssr.tracking`` sets, is cleared afterwards so a later test's bare ``MlflowClient()`` reads its own.
    """
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path_factory.getbasetemp()}/stray-mlflow.db")
    yield
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    if utils is not None:
        utils._tracking_uri = None


def write_params(tmp: Path, overrides: dict) -> Path:
    """``tmp/params.yaml``: the shipped params.yaml with dotted ``overrides`` (a whole file, as stages require)."""
    import yaml

    from medssr.config import set_dotted

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in overrides.items():
        set_dotted(raw, key, value)
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def params_without(key: str) -> dict:
    """The shipped params.yaml as a dict with the dotted ``key`` deleted (to check what a missing key is called)."""
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    *parents, last = key.split(".")
    node = raw
    for p in parents:
        node = node[p]
    del node[last]
    return raw


@pytest.fixture(scope="session")
def declared_benchmarks():
    """The benchmarks the shipped params.yaml declares, loaded from data/raw (real rows; read once per run)."""
    from medssr.config import load_params
    from medssr.data.loaders import load_benchmarks

    return load_benchmarks(load_params(ROOT / "params.yaml").data.benchmarks, RAW)


@pytest.fixture(scope="session")
def medmcqa_dev():
    """MedMCQA dev (a training source), by id."""
    from medssr.data.loaders import load_training_source

    return {q.id: q for q in load_training_source("medmcqa", RAW)}
