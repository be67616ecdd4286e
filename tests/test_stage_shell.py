"""Every DVC stage script shares one shell: a user error is one line naming what to fix, never a traceback."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from medssr.errors import MedssrError
from tests.conftest import write_params
from tests.dvc_yaml import cmd_args

ROOT = Path(__file__).resolve().parents[1]
# (script, the arguments of its dvc.yaml cmd, the name in its messages)
STAGES = [("model.py", cmd_args("model"), "model"), ("prepare.py", cmd_args("prepare"), "prepare"), ("corpus.py", cmd_args("corpus"), "corpus"),
          ("synthesize.py", cmd_args("synthesize"), "synthesize"), ("label.py", cmd_args("label"), "label"),
          ("train.py", cmd_args("stage1"), "train"), ("evaluate.py", cmd_args("evaluate"), "evaluate"), ("report.py", cmd_args("report"), "report")]


@pytest.mark.parametrize("script,extra,name", STAGES, ids=[s[2] for s in STAGES])
def test_bad_params_file_is_one_line_naming_the_key(tmp_path, script, extra, name):
    (tmp_path / "params.yaml").write_text("synth:\n  rare_ratio: high\n")
    r = subprocess.run([sys.executable, str(ROOT / "stages" / script), *extra, "--params", str(tmp_path / "params.yaml")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert f"[{name}] error: " in r.stderr and "synth.rare_ratio" in r.stderr and "'high'" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("script,extra,name", STAGES, ids=[s[2] for s in STAGES])
def test_incomplete_params_file_is_rejected_by_every_stage(tmp_path, script, extra, name):
    """A file without synth.generator once ran on code defaults that differed from params.yaml's (#13.8)."""
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    del raw["synth"]["generator"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    r = subprocess.run([sys.executable, str(ROOT / "stages" / script), *extra, "--params", str(tmp_path / "params.yaml")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert f"[{name}] error: {tmp_path / 'params.yaml'}: missing synth.generator (" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("script,extra,name", STAGES, ids=[s[2] for s in STAGES])
def test_a_stage_run_without_its_paths_names_the_missing_arguments(tmp_path, script, extra, name):
    """Paths live in dvc.yaml's cmd only: a script has no path defaults to drift from it."""
    positional = extra[:1] if script == "train.py" else []
    r = subprocess.run([sys.executable, str(ROOT / "stages" / script), *positional, "--params", str(ROOT / "params.yaml")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "error: the following arguments are required: --" in r.stderr and "Traceback" not in r.stderr


def test_every_dvc_stage_runs_through_the_shared_shell():
    import yaml

    cmds = {s["cmd"].split()[1] for s in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values()}
    assert cmds == {f"stages/{s}" for s, _, _ in STAGES}
    for script in cmds:
        assert "run_stage(" in (ROOT / script).read_text(), script


def test_user_facing_errors_share_one_base():
    from eval.benchmarks import BenchmarkError
    from eval.runner import EvalError
    from medssr.config import ConfigError
    from medssr.knowledge.embedders import MissingWeightsError
    from medssr.knowledge.index import IndexMismatchError
    from medssr.label.run import LabelError
    from medssr.llm.base import LLMError
    from medssr.models import ModelError
    from medssr.records import RecordError
    from medssr.rl.run import TrainError
    from medssr.synth.run import SynthError

    for cls in (BenchmarkError, EvalError, ConfigError, MissingWeightsError, IndexMismatchError, LabelError, LLMError, ModelError,
                RecordError, TrainError, SynthError):
        assert issubclass(cls, MedssrError), cls
    assert issubclass(RecordError, ValueError) and issubclass(MissingWeightsError, FileNotFoundError)  # old catch sites still work


# -- empty outputs fail at the stage that produced them (#13.7) -----------------------------------------------------
def _stage_module(script: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"stage_{script}", ROOT / "stages" / script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod




def _synth_project(tmp: Path, base_url: str, allow_empty: bool = False) -> list[str]:
    from medssr.data.loaders import load_medmcqa
    from medssr.records import write_jsonl

    seeds = [q for q in load_medmcqa(ROOT / "data" / "raw") if len(q.question) >= 100][:8]
    write_jsonl(tmp / "prepared" / "seeds.jsonl", seeds)
    write_jsonl(tmp / "prepared" / "entities.jsonl", [{"name": "Fabry disease"}])
    write_jsonl(tmp / "prepared" / "benchmarks" / "medqa.jsonl", seeds[:0])
    params = write_params(tmp, {"project.experiment": "empty-synth", "synth.n": 3, "synth.max_attempts": 5, "synth.rare_ratio": 0.0,
                                "synth.cache_dir": str(tmp / "cache"), "synth.prompt_variant": "", **({"synth.allow_empty": True} if allow_empty else {}),
                                **{f"synth.generator.{k}": v for k, v in {"backend": "openai_compatible", "model": "fake", "base_url": base_url,
                                                                            "concurrency": 2, "max_retries": 0, "timeout_s": 10.0}.items()}})
    return ["--params", str(params), "--prepared", str(tmp / "prepared"), "--corpus", str(tmp / "corpus"),
            "--out", str(tmp / "synthetic" / "questions.jsonl"), "--report", str(tmp / "synth.json"),
            "--metrics", str(tmp / "synth.metrics.json"), "--no-progress-bar"]


def test_a_synthesize_run_that_accepts_nothing_fails_naming_the_cause(tmp_path, mlflow_store, monkeypatch, capsys):
    """An all-garbage generator once ended '0 of 30 questions' with exit 0 and the empty file flowed on to label."""
    from tests.llm_servers import FakeOpenAIServer

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("MEDSSR_ROOT", str(tmp_path))
    with FakeOpenAIServer(responder=lambda req: "I am sorry, I cannot write medical questions.") as srv:
        rc = _stage_module("synthesize.py").main(_synth_project(tmp_path, srv.base_url))
        sent = len(srv.requests)
    out, err = capsys.readouterr()
    assert rc == 1 and sent == 5, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"[synthesize] error: {tmp_path}/synthetic/questions.jsonl (0 of 3 questions) is empty: "
                           "all 5 generator responses were rejected (")
    assert "change synth.generator (a stronger model" in line and line.endswith("(or set synth.allow_empty: true to let an empty result pass)")
    assert "synthesize: 0/3 questions from 5 attempts" in out  # the usual summary first
    # what was paid for is on disk: the report, and the progress file a rerun resumes from
    assert json.loads((tmp_path / "synth.json").read_text())["attempts"] == 5
    assert len((tmp_path / "synthetic" / "questions.progress.jsonl").read_text().splitlines()) == 5


def test_synth_allow_empty_lets_an_empty_run_exit_0(tmp_path, mlflow_store, monkeypatch, capsys):
    from tests.llm_servers import FakeOpenAIServer

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("MEDSSR_ROOT", str(tmp_path))
    with FakeOpenAIServer(responder=lambda req: "no") as srv:
        assert _stage_module("synthesize.py").main(_synth_project(tmp_path, srv.base_url, allow_empty=True)) == 0
    assert "synthesize: 0/3 questions" in capsys.readouterr().out


def _label_run(tmp: Path, model_dir: Path, n: int = 2, **overrides) -> int:
    from medssr.data.loaders import load_medmcqa
    from medssr.records import write_jsonl

    qs = load_medmcqa(ROOT / "data" / "raw")[:n]
    write_jsonl(tmp / "questions.jsonl", [q.to_dict() | {"source": "synthetic", "answer": None} for q in qs])
    params = write_params(tmp, {"project.experiment": "empty-label", "label.reliability_n": 0, "label.sampling.n": 2,
                                "label.sampling.max_new_tokens": 4, **overrides})
    return _stage_module("label.py").main(["--params", str(params), "--model", str(model_dir), "--synthetic", str(tmp / "questions.jsonl"),
                                           "--benchmarks", str(tmp / "none"), "--out", str(tmp / "labeled.jsonl"),
                                           "--report", str(tmp / "label.json"), "--metrics", str(tmp / "label.metrics.json"),
                                           "--plot", str(tmp / "label.png"), "--plot-data", str(tmp / "label_plot.json"), "--no-progress-bar"])


def test_a_label_run_that_keeps_nothing_fails_naming_the_cause(tmp_path, tiny_model_dir, one_torch_thread, mlflow_store, monkeypatch, capsys):
    """A random 2-layer policy never commits an answer in 4 tokens: 0/2 kept once exited 0."""
    monkeypatch.setenv("MEDSSR_ROOT", str(tmp_path))
    assert _label_run(tmp_path, tiny_model_dir) == 1
    out, err = capsys.readouterr()
    line = err.strip().splitlines()[-1]
    assert line == (f"[label] error: {tmp_path}/labeled.jsonl (0 of 2 questions kept) is empty: 2 no vote committed an answer; "
                    "change label.sampling.max_new_tokens (votes cut before the answer) or model.policy "
                    "(or set label.allow_empty: true to let an empty result pass)")
    assert "[label] kept 0/2" in out
    assert json.loads((tmp_path / "label.json").read_text())["dropped_no_valid"] == 2  # the report is written
    from medssr.label.run import progress_path_for

    assert len(progress_path_for(tmp_path / "labeled.jsonl").read_text().splitlines()) >= 2  # the votes are kept for the rerun


def test_label_allow_empty_lets_an_empty_run_exit_0(tmp_path, tiny_model_dir, one_torch_thread, mlflow_store, monkeypatch):
    monkeypatch.setenv("MEDSSR_ROOT", str(tmp_path))
    assert _label_run(tmp_path, tiny_model_dir, **{"label.allow_empty": True}) == 0


def test_a_prepare_run_without_training_rows_fails_after_writing_its_report(tmp_path, mlflow_store, monkeypatch, capsys):
    monkeypatch.setenv("MEDSSR_ROOT", str(tmp_path))
    params = write_params(tmp_path, {"data.train_sources": []})
    assert _stage_module("prepare.py").main(["--params", str(params), "--raw-dir", str(ROOT / "data" / "raw"), "--out-dir", str(tmp_path / "p"),
                                             "--report", str(tmp_path / "prepare.json"), "--metrics", str(tmp_path / "prepare.metrics.json")]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == (f"[prepare] error: {tmp_path}/p/train.jsonl is empty: no training row is left of 0 loaded (leakage removed 0); "
                    "change data.train (its declared files and formats), data.train_sources or data.max_train (or set data.allow_empty: true to let an empty result pass)")
    assert json.loads((tmp_path / "prepare.json").read_text())["train_rows"] == 0


def test_a_label_run_with_nothing_to_label_fails_naming_the_input(tmp_path, tiny_model_dir, one_torch_thread, mlflow_store, monkeypatch,
                                                                   capsys):
    """'label' once kept 0/0 with exit 0 when synthesize had been allowed to end empty."""
    monkeypatch.setenv("MEDSSR_ROOT", str(tmp_path))
    assert _label_run(tmp_path, tiny_model_dir, n=0) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"[label] error: {tmp_path}/labeled.jsonl (0 of 0 questions kept) is empty: {tmp_path}/questions.jsonl holds no "
                           "questions; change the synthesize stage's synth.* params")


def test_metric_files_hold_numbers_only(tmp_path, mlflow_store):
    """`dvc metrics show` once printed an 11,000-character header of definitions, examples and paths (#15.2)."""
    from medssr.stage import run_stage

    report = {"stage": "synthesize", "out": "/abs/path/questions.jsonl", "accepted": 3, "acceptance_rate": 0.75, "nan": float("nan"),
              "rejected": {"parse": 1, "examples": ["Q: ..."]}, "ok": True, "definitions": {"accepted": "passed every filter"}}

    def body(args, params):
        (tmp_path / "synth.json").write_text(json.dumps(report))

    rc = run_stage("synthesize", None, lambda ap: None, body, ["--params", str(ROOT / "params.yaml")],
                   metrics=lambda a: {str(tmp_path / "metrics" / "synth.json"): str(tmp_path / "synth.json")})
    assert rc == 0
    assert json.loads((tmp_path / "metrics" / "synth.json").read_text()) == {"accepted": 3, "acceptance_rate": 0.75, "rejected.parse": 1, "ok": 1}


def test_dvc_yaml_metrics_are_the_numeric_files_and_plots_name_x_and_y():
    import yaml

    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    metric_files = [next(iter(m)) if isinstance(m, dict) else m for s in dvc["stages"].values() for m in s.get("metrics", [])]
    assert metric_files and all(f.startswith("metrics/") for f in metric_files), metric_files
    plots = {next(iter(p)): p[next(iter(p))] for p in dvc["plots"]}
    assert {"reward", "kl", "distinct_answers", "train_accuracy", "accuracy_per_checkpoint", "accuracy_vs_alpha"} <= set(plots)
    assert all(p.get("x") and p.get("y") for p in plots.values())
    tracked = subprocess.run(["git", "ls-files", "reports"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert tracked == [], f"DVC outputs committed to git (stale on the next run): {tracked}"


def _parsers(p: argparse.ArgumentParser, name: str):
    yield name, p
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sub_name, sub in a.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_every_cli_argument_and_stage_argument_has_help():
    """Subcommand `--help` listed bare argument names (#15.4)."""
    from medssr.cli import build_parser
    from medssr.review import review_parser

    bare = [f"{name}: {a.dest}" for root, n in ((build_parser(), "medssr"), (review_parser(), "medssr review"))
            for name, p in _parsers(root, n) for a in p._actions
            if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) and not a.help]
    for script in sorted((ROOT / "stages").glob("*.py")):
        mod = _stage_script(script)
        ap = argparse.ArgumentParser()
        if hasattr(mod, "add_args"):
            mod.add_args(ap)
        bare += [f"stages/{script.name}: {a.dest}" for a in ap._actions if not isinstance(a, argparse._HelpAction) and not a.help]
    assert not bare, bare


def _stage_script(path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"stage_help_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
