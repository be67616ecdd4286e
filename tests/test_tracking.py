"""Tracking: one absolute store for the project, and every stage of one pipeline execution under one parent."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

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
    for stage, name in (("prepare", "prepare/seeds"), ("synthesize", "synth/accepted")):
        with tracking.stage_run(stage, params, {"x": 1}) as mlflow:
            mlflow.log_metric(name, 3)
    other = load_params(ROOT / "params.yaml", overrides={"synth.rare_ratio": 0.5})
    with tracking.stage_run("synthesize", other) as mlflow:
        mlflow.log_metric("synth/accepted", 4)
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


# ---- the lab notebook a researcher reads at a glance (#15.1) -------------------------------------------------

def _committed_project(tmp_path, monkeypatch) -> Path:
    """A git checkout whose committed params.yaml is the shipped one (the baseline a run's description diffs against)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@localhost"}
    for cmd in (["git", "init", "-q"], ["git", "add", "params.yaml"], ["git", "commit", "-qm", "params"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True)
    monkeypatch.setenv("MEDSSR_ROOT", str(repo))
    return repo


def _runs(params, filter_string=""):
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name(params.project.experiment)
    return client, exp, client.search_runs([exp.experiment_id], filter_string)


def test_the_parent_run_is_named_by_alpha_strategy_and_policy_and_describes_the_changed_params(mlflow_store, tmp_path, monkeypatch):
    _committed_project(tmp_path, monkeypatch)
    monkeypatch.setenv("DVC_EXP_NAME", "civil-lama")
    params = load_params(ROOT / "params.yaml", overrides={"synth.rare_ratio": 0.5})
    with tracking.stage_run("synthesize", params):
        pass
    _, _, (parent,) = _runs(params, "tags.medssr_role = 'pipeline'")
    assert parent.info.run_name == "α=0.5 · two_stage · smollm2-135m · civil-lama"
    note = parent.data.tags["mlflow.note.content"]
    assert "`synth.rare_ratio`: 0.25 → 0.5" in note
    assert "`train.strategy`" not in note  # unchanged params are not listed


def test_the_experiment_opens_on_the_runs_table_not_the_genai_overview(mlflow_store):
    params = load_params(ROOT / "params.yaml")
    with tracking.stage_run("prepare", params):
        pass
    _, exp, _ = _runs(params)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


def test_the_parent_carries_only_the_headline_metrics_one_name_per_quantity(mlflow_store):
    params = load_params(ROOT / "params.yaml")
    tracking.log_summary_to_parent(params, {"eval/avg": 0.4, "eval/avg_ci_low": 0.3, "eval/raredis/avg": 0.2, "eval/medqa/acc": 0.5,
                                            "train/stage1/reward_mean_last": 0.7, "train/stage1/reward_mean_mean": 0.6,
                                            "synth/accepted": 12, "label/kept": 9, "prepare/seeds": 800})
    _, _, (parent,) = _runs(params, "tags.medssr_role = 'pipeline'")
    assert parent.data.metrics == {"eval/avg": 0.4, "eval/avg_ci_low": 0.3, "eval/raredis/avg": 0.2, "synth/accepted": 12, "label/kept": 9}


def _shell(name, body, argv=(), **kw):
    from medssr.stage import run_stage

    return run_stage(name, None, lambda ap: None, body, ["--params", str(ROOT / "params.yaml"), *argv], **kw)


def test_a_stage_run_spans_the_whole_stage_and_the_library_logs_into_it(mlflow_store):
    import time

    def body(args, params):
        time.sleep(1.0)  # the stage's work, before the library opens "its" run as it does today
        with tracking.stage_run("synthesize", params, {"synth.n": 3}) as mlflow:
            mlflow.log_metric("synth/accepted", 3)

    assert _shell("synthesize", body) == 0
    params = load_params(ROOT / "params.yaml")
    _, _, (run,) = _runs(params, "tags.medssr_stage = 'synthesize'")
    assert run.info.status == "FINISHED"
    assert run.info.end_time - run.info.start_time >= 1000
    assert run.data.metrics["synth/accepted"] == 3 and run.data.params["synth.n"] == "3"
    _, _, (parent,) = _runs(params, "tags.medssr_role = 'pipeline'")
    assert parent.info.end_time >= run.info.end_time  # the parent's Duration covers its stages


def test_a_stage_that_fails_leaves_its_run_failed(mlflow_store):
    from medssr.errors import MedssrError

    def body(args, params):
        raise MedssrError("no seeds")

    assert _shell("label", body) == 1
    _, _, (run,) = _runs(load_params(ROOT / "params.yaml"), "tags.medssr_stage = 'label'")
    assert run.info.status == "FAILED"


def test_long_stages_record_system_metrics(mlflow_store, monkeypatch):
    import time

    monkeypatch.setenv("MEDSSR_SYSTEM_METRICS_INTERVAL_S", "0.2")
    assert _shell("evaluate", lambda args, params: time.sleep(2.0)) == 0
    _, _, (run,) = _runs(load_params(ROOT / "params.yaml"), "tags.medssr_stage = 'evaluate'")
    assert any(k.startswith("system/cpu") for k in run.data.metrics), sorted(run.data.metrics)


def test_stage_artifacts_dataset_inputs_and_parent_artifacts_land_where_people_look(mlflow_store, tmp_path):
    import hashlib

    data = tmp_path / "seeds.jsonl"
    data.write_text('{"id": 1}\n')
    pred = tmp_path / "predictions"
    pred.mkdir()
    (pred / "predictions_base.jsonl").write_text("{}\n")
    (tmp_path / "eval.json").write_text("{}")
    (tmp_path / "report.md").write_text("# report")
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "fig4.png").write_bytes(b"png")

    def body(args, params):
        assert tracking.log_dataset_inputs("evaluate", {"seeds": data, "missing": tmp_path / "nope.jsonl"}, context="evaluation") == ["seeds"]
        tracking.log_stage_artifacts("evaluate", [tmp_path / "eval.json"])
        tracking.log_stage_artifacts("evaluate", pred, "predictions")
        tracking.log_parent_artifacts(params, [tmp_path / "report.md", tmp_path / "figures"])

    assert _shell("evaluate", body) == 0
    params = load_params(ROOT / "params.yaml")
    client, _, (run,) = _runs(params, "tags.medssr_stage = 'evaluate'")
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"eval.json", "predictions"}
    assert [a.path for a in client.list_artifacts(run.info.run_id, "predictions")] == ["predictions/predictions_base.jsonl"]
    (ds,) = run.inputs.dataset_inputs
    assert ds.dataset.name == "seeds" and ds.dataset.digest == hashlib.sha256(data.read_bytes()).hexdigest()[:36]
    assert {t.key: t.value for t in ds.tags}["mlflow.data.context"] == "evaluation"
    _, _, (parent,) = _runs(params, "tags.medssr_role = 'pipeline'")
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {"report.md", "figures"}


@pytest.mark.slow
def test_the_screenshot_script_captures_runs_table_parent_run_and_compare_view(tmp_path):
    """docs/screenshots.py on its --demo store: a real `mlflow server` on 127.0.0.1 and headless Chromium (#15.4)."""
    import shutil
    import struct

    if not shutil.which("chromium") and not Path("/usr/bin/chromium").exists():
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    r = subprocess.run([sys.executable, str(ROOT / "docs" / "screenshots.py"), "--demo", "--out", str(tmp_path)], capture_output=True,
                       text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "parent run 'α=0.5 · two_stage · smollm2-135m · demo-high': eval/avg=" in r.stdout
    for name in ("mlflow_runs.png", "mlflow_parent_run.png", "mlflow_compare.png"):
        png = (tmp_path / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000, name  # a page, not a blank
        assert struct.unpack(">II", png[16:24])[0] >= 1600, name


# -- one gate for every write (#25) ---------------------------------------------------------------------------------

WRITE_CALLS = {"log_metric", "log_metrics", "log_param", "log_params", "log_batch", "log_artifact", "log_artifacts", "log_text",
               "log_dict", "log_figure", "log_image", "log_table", "log_input", "log_inputs", "set_tag", "set_tags",
               "set_experiment_tag", "set_experiment_tags", "create_run", "create_experiment", "start_run", "set_terminated",
               "update_run", "delete_tag", "log_model", "autolog", "rename_experiment", "set_experiment"}
READERS = {"eval/report.py", "medssr/metric_names.py"}  # they import MlflowClient to read runs, never to write


def _mlflow_imports(tree):
    import ast

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names if a.name == "mlflow" or a.name.startswith("mlflow."))
        elif isinstance(node, ast.ImportFrom) and node.module and (node.module == "mlflow" or node.module.startswith("mlflow.")):
            yield node.lineno, node.module
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("import_module", "__import__"):
            if any(isinstance(a, ast.Constant) and str(a.value).startswith("mlflow") for a in node.args):
                yield node.lineno, "import_module(mlflow...)"


def test_only_the_tracking_gate_imports_mlflow_to_write():
    """A raw `import mlflow` anywhere else could write around the scrubber: only mlflow.entities (plain data classes)
    may be imported elsewhere, and the two readers may import the client but call no write on anything."""
    import ast

    slips = []
    for path in sorted([*(ROOT / "medssr").rglob("*.py"), *(ROOT / "eval").rglob("*.py"), *(ROOT / "stages").rglob("*.py")]):
        rel = path.relative_to(ROOT).as_posix()
        if rel == "medssr/tracking.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for line, mod in _mlflow_imports(tree):
            if mod == "mlflow.entities" or (rel in READERS and mod == "mlflow.tracking"):
                continue
            slips.append(f"{rel}:{line}: imports {mod}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("_mlflow", "_client", "_raw") and getattr(node.value, "id", "") == "tracking":
                slips.append(f"{rel}:{node.lineno}: reaches tracking.{node.attr}")
            if isinstance(node, ast.ImportFrom) and node.module == "medssr.tracking" and any(a.name in ("_mlflow", "_client") for a in node.names):
                slips.append(f"{rel}:{node.lineno}: imports the raw mlflow from medssr.tracking")
            if rel in READERS and isinstance(node, ast.Call) and getattr(node.func, "attr", None) in WRITE_CALLS:
                if ast.unparse(node.func.value) != "self._module":  # metric_names.CheckedMlflow: built by nothing in medssr
                    slips.append(f"{rel}:{node.lineno}: a reader calls {node.func.attr}")
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "CheckedMlflow":
                slips.append(f"{rel}:{node.lineno}: wraps the raw mlflow module (CheckedMlflow); use the tracking gate")
    assert not slips, "MLflow writes must go through medssr.tracking's gate (#25):\n" + "\n".join(slips)


def test_the_gate_offers_no_route_around_the_scrubber(mlflow_store):
    params = load_params(ROOT / "params.yaml")
    with tracking.stage_run("model", params) as mlflow:
        assert isinstance(mlflow, tracking.TrackingGate)
        for raw_route in ("tracking", "log_batch", "MlflowClient().log_metric", "set_experiment", "start_run", "_module"):
            obj, *rest = raw_route.split("().")
            with pytest.raises(AttributeError, match="tracking gate"):
                target = mlflow.MlflowClient() if rest else mlflow
                getattr(target, rest[0] if rest else obj)


def test_every_write_route_of_the_gate_is_scrubbed(mlflow_store, tmp_path, monkeypatch):
    """Params, tags, run names, descriptions, metric keys, text/dict/file artifacts and dataset inputs: neither the key in
    OPENAI_API_KEY nor the password of a base_url reaches the store or the artifact root, raw, URL-encoded or base64."""
    import base64
    import json
    from urllib.parse import quote

    from mlflow.tracking import MlflowClient

    key, pw = "sk-gatecanary-0b1c2d3e4f", "pw-gatecanary-9a8b7c"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    url = f"http://proxyuser:{pw}@127.0.0.1:9/v1"
    params = load_params(ROOT / "params.yaml", overrides={"synth.generator.base_url": url, "project.experiment": "gate-canary"})
    leaky = f"base_url {url}, key {key}, quoted {quote(pw, safe='')}, b64 {base64.b64encode(key.encode()).decode()}, bare {pw}"
    (tmp_path / "notes.txt").write_text(leaky)
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "sub").mkdir()
    (tmp_path / "dir" / "sub" / "eval.json").write_text(json.dumps({"why": leaky}))
    (tmp_path / "dir" / "plot.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff" + key.encode())
    data = tmp_path / f"data-{pw}.jsonl"
    data.write_text("{}\n")
    with tracking.stage_scope("synthesize", params):
        with tracking.stage_run("synthesize", params, {"synth.generator.base_url": url, "synth.note": leaky}) as mlflow:
            mlflow.set_tags({"why": leaky, f"k_{pw}": "v"})
            mlflow.set_tag("mlflow.note.content", leaky)
            mlflow.log_param("extra", leaky)
            mlflow.log_text(leaky, "log.txt")
            mlflow.log_dict({"report": leaky, f"k {key}": 1}, "report.json")
            mlflow.log_artifact(str(tmp_path / "notes.txt"))
            mlflow.log_artifacts(str(tmp_path / "dir"), "bundle")
        tracking.log_stage_artifacts("synthesize", [tmp_path / "dir"])
        tracking.log_dataset_inputs("synthesize", {f"seeds {pw}": data})
    tracking.log_parent_artifacts(params, tmp_path / "notes.txt")
    tracking.set_parent_tags(params, {"medssr_eval_final": leaky})

    client = MlflowClient(mlflow_store)
    exp = client.get_experiment_by_name("gate-canary")
    runs = client.search_runs([exp.experiment_id])
    assert {r.data.tags.get("medssr_role") for r in runs} == {"pipeline", "stage"}
    forms = {key, pw, quote(pw, safe=""), base64.b64encode(key.encode()).decode().rstrip("=")}
    art_root = Path(exp.artifact_location.removeprefix("file://"))
    stage = next(r for r in runs if r.data.tags.get("medssr_role") == "stage")
    assert "***" in stage.data.tags["why"] and stage.data.params["synth.generator.base_url"] == "http://127.0.0.1:9/v1"
    files = [p for p in art_root.rglob("*") if p.is_file()]
    assert {"log.txt", "report.json", "notes.txt", "eval.json", "plot.png"} <= {p.name for p in files}
    db = Path(mlflow_store.removeprefix("sqlite:///")).read_bytes()
    import sqlite3

    con = sqlite3.connect(mlflow_store.removeprefix("sqlite:///"))
    rows = "\n".join(con.iterdump())
    con.close()
    for where, blob in [("mlflow.db", db), ("rows", rows.encode()), *((str(p), p.read_bytes()) for p in files)]:
        for f in forms:
            assert f.encode() not in blob, f"{f!r} in {where}"


def test_a_credential_in_params_is_named_once_with_the_variable_to_use(capsys):
    from medssr.secrets import PARAMS_SECRET_WARNING

    tracking._WARNED_PARAMS.clear()
    flat = {"synth.generator.backend": "openai_compatible", "synth.generator.base_url": "http://u:pw-typed-in-1234@h/v1"}
    assert len(tracking.warn_params_secrets(flat)) == 1 and tracking.warn_params_secrets(flat) == []
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and PARAMS_SECRET_WARNING in err[0] and "synth.generator.base_url" in err[0] and "OPENAI_API_KEY" in err[0]
    assert "pw-typed-in-1234" not in err[0]
    from medssr.config import to_flat_dict

    assert tracking.warn_params_secrets(to_flat_dict(load_params(ROOT / "params.yaml"))) == []  # the shipped params carry none
