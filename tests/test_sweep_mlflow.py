"""A real α sweep: `dvc exp run --queue` over two rare ratios on the micro profile, logged to a real MLflow
server on 127.0.0.1, then compared through `dvc exp show`, `dvc plots diff` and MLflow's REST API.

``MEDSSR_SWEEP_KEEP=<dir>`` keeps the sweep's MLflow store and artifacts there (docs/screenshots.py reads them)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medssr.mlflow_ui import api, experiment_id, mlflow_server

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _leaves(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _run(cmd, cwd, env, timeout=600):
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.mark.slow
def test_two_value_sweep_lands_side_by_side_in_dvc_and_the_mlflow_server(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "--null", "-T", "-", "-cf", str(tmp_path / "src.tar")], cwd=ROOT, input=files, check=True)
    subprocess.run(["tar", "xf", str(tmp_path / "src.tar")], cwd=repo, check=True)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "true", "HF_HUB_OFFLINE": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "OMP_WAIT_POLICY": "PASSIVE",
           "MEDSSR_MODEL_CACHE": str(ROOT / ".cache" / "models"), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@localhost",
           "MEDSSR_STRICT": "1"}  # a stage that logs a metric name medssr.metric_names lacks fails
    env.pop("PYTEST_CURRENT_TEST", None)
    _run([BIN / "medssr", "profile", "apply", "micro"], repo, env)
    _run(["git", "init", "-q"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "micro"], repo, env)

    with mlflow_server(f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "art", tmp_path / "server.log", env=env, timeout_s=90) as base:
        env["MLFLOW_TRACKING_URI"] = base

        _run([BIN / "dvc", "exp", "run", "--queue", "-S", "synth.rare_ratio=0,0.5"], repo, env)
        # to a file, not a pipe: the detached queue worker inherits the stream, and a captured pipe would make this
        # call wait for the whole queue (it timed out at 600 s on a loaded machine)
        deadline = time.time() + 1200
        with open(tmp_path / "queue_start.log", "w") as log:
            started = subprocess.run([BIN / "dvc", "queue", "start", "-j", "1"], cwd=repo, env=env, stdout=log,
                                     stderr=subprocess.STDOUT, timeout=1200)
        assert started.returncode == 0, (tmp_path / "queue_start.log").read_text()[-3000:]
        while True:
            status = _run([BIN / "dvc", "queue", "status"], repo, env)
            if "Queued" not in status and "Running" not in status:
                break
            assert time.time() < deadline, status
            time.sleep(5)
        failed = [line.split()[1] for line in status.splitlines() if line.rstrip().endswith("Failed")]
        if failed:
            logs = subprocess.run([BIN / "dvc", "queue", "logs", failed[0]], cwd=repo, env=env, capture_output=True, text=True)
            pytest.fail(f"{status}\n{logs.stdout[-4000:]}{logs.stderr[-2000:]}")

        shown = json.loads(_run([BIN / "dvc", "exp", "show", "--json"], repo, env))
        exps = [e for commit in shown for e in (commit.get("experiments") or [])]
        ratios = set()
        for e in exps:
            data = e["revs"][0]["data"]
            ratios.add(data["params"]["params.yaml"]["data"]["synth"]["rare_ratio"])
            assert "stage2" in data["metrics"]["metrics/eval.json"]["data"]
            for path, m in data["metrics"].items():  # numbers only: no 11,000-character header of strings (#15.2)
                assert path.startswith("metrics/"), path
                assert not [k for k, v in _leaves(m["data"]) if not isinstance(v, (int, float))], path
        assert ratios == {0, 0.5}

        # `dvc plots diff` between the two experiments overlays the declared plots, one color per experiment (#15.2)
        names = [e["name"] for e in exps]
        plots = json.loads(_run([BIN / "dvc", "plots", "diff", *names, "--json"], repo, env))["data"]
        for plot_id, field in (("reward", "reward_mean"), ("kl", "kl"), ("train_accuracy", "accuracy"), ("accuracy_vs_alpha", "eval_avg"),
                               ("accuracy_per_checkpoint", "acc")):
            values = plots[plot_id][0]["content"]["data"]["values"]
            assert {v["rev"] for v in values if v.get(field) is not None} == set(names), (plot_id, values[:4])
        alphas = {v["rev"]: v["alpha"] for v in plots["accuracy_vs_alpha"][0]["content"]["data"]["values"]}
        assert sorted(alphas.values()) == [0, 0.5]

        exp_id = experiment_id(base, "medssr")
        runs = api(base, "runs/search", {"experiment_ids": [exp_id], "filter": "tags.medssr_role = 'pipeline'", "max_results": 50})["runs"]
        evaluated = {}
        for r in runs:
            params = {p["key"]: p["value"] for p in r["data"].get("params", [])}
            metrics = {m["key"]: m["value"] for m in r["data"].get("metrics", [])}
            if "eval/avg" in metrics:
                evaluated[params["synth.rare_ratio"]] = (r["info"]["run_name"], metrics)
        assert set(evaluated) == {"0.0", "0.5"}, sorted(evaluated)
        # the runs table shows both runs named by α, with eval avg and RareDis avg, and only the headline numbers (#15.1)
        from medssr.tracking import HEADLINE_METRICS

        for alpha, (name, metrics) in evaluated.items():
            assert name.startswith(f"α={float(alpha):g} · supervised · tiny-random-llama · "), name
            assert {"eval/avg", "eval/raredis/avg", "synth/accepted"} <= set(metrics) <= set(HEADLINE_METRICS)
        # every name a researcher finds in the store, on any run of either pipeline, is in the registry (#14)
        from medssr import metric_names

        logged = metric_names.logged_names(f"sqlite:///{tmp_path}/mlflow.db")
        assert {"model/size_mb", "train/stage2/reward_mean", "train/stage2/global_step", "eval/base/medqa/acc"} <= logged
        assert metric_names.unregistered(logged) == []
        if os.environ.get("MEDSSR_SWEEP_KEEP"):
            keep = Path(os.environ["MEDSSR_SWEEP_KEEP"])
            keep.mkdir(parents=True, exist_ok=True)
            subprocess.run(["cp", "-r", str(tmp_path / "mlflow.db"), str(tmp_path / "art"), str(keep)], check=True)
