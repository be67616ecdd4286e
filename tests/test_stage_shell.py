"""Every DVC stage script shares one shell: a user error is one line naming what to fix, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from medssr.errors import MedssrError

ROOT = Path(__file__).resolve().parents[1]
STAGES = [("model.py", [], "model"), ("prepare.py", [], "prepare"), ("corpus.py", [], "corpus"), ("synthesize.py", [], "synthesize"),
          ("label.py", [], "label"), ("train.py", ["stage1"], "train"), ("evaluate.py", [], "evaluate"), ("report.py", [], "report")]


@pytest.mark.parametrize("script,extra,name", STAGES, ids=[s[2] for s in STAGES])
def test_bad_params_file_is_one_line_naming_the_key(tmp_path, script, extra, name):
    (tmp_path / "params.yaml").write_text("synth:\n  rare_ratio: high\n")
    r = subprocess.run([sys.executable, str(ROOT / "stages" / script), *extra, "--params", str(tmp_path / "params.yaml")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert f"[{name}] error: " in r.stderr and "synth.rare_ratio" in r.stderr and "'high'" in r.stderr
    assert "Traceback" not in r.stderr


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
