"""Held-out accuracy during training (issue 22.8, Fig. 6's performance panel): measured on the live weights."""

from __future__ import annotations

import json

import pytest

from medssr.config import load_params
from medssr.records import write_jsonl
from tests.test_trl_backend import ROOT, TINY, _metric, _paths, medmcqa, project  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_heldout_accuracy_is_that_of_the_weights_at_each_measured_step(smol_model_dir, project, medmcqa):  # noqa: F811
    import shutil

    from mlflow.tracking import MlflowClient

    from medssr.prompt_format import prompt_format
    from medssr.rl.data import load_train_prompt
    from medssr.rl.heldout import heldout_accuracy, heldout_questions
    from medssr.rl.run import run_train_stage
    from medssr.sampling import HFSampler

    shutil.rmtree(project / "artifacts/models/policy")
    shutil.copytree(smol_model_dir, project / "artifacts/models/policy")
    write_jsonl(project / "data/prepared/benchmarks/medqa.jsonl", medmcqa[:12])
    p = load_params(ROOT / "params.yaml", {**TINY, "train.eval_every": 2, "train.heldout_n": 6, "train.heldout_max_new_tokens": 48,
                                            "train.stage1": {**TINY["train.stage1"], "max_steps": 3, "learning_rate": 3e-4}})
    report = run_train_stage(p, "stage1", _paths("stage1"))
    rows = report["heldout"]
    assert [r["step"] for r in rows] == [0, 2, 3] and all(r["heldout_n"] == 6 for r in rows)
    assert json.loads((project / "reports/train_stage1_heldout.json").read_text()) == rows

    # the first point is the policy's, the last the saved checkpoint's: a fresh greedy evaluation gives the same numbers
    questions = heldout_questions(project / "data/prepared/benchmarks", 6, p.train.seed)
    template = load_train_prompt(project / "prompts/eval_f4.txt")
    for model_dir, row in ((project / "artifacts/models/policy", rows[0]), (project / "checkpoints/stage1", rows[-1])):
        fmt = prompt_format(model_dir)
        fresh = heldout_accuracy(HFSampler(str(model_dir), chat_template=fmt.chat_template), questions, template, 48)
        assert fresh == (row["heldout_acc"], row["heldout_valid_share"]), model_dir
    assert any(r["heldout_valid_share"] > 0 for r in rows), "SmolLM2 never answered: the probe measures nothing"

    client = MlflowClient()
    run = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.medssr_stage = 'stage1'")[0]
    assert [s for s, _ in _metric(run.info.run_id, "train/stage1/heldout_acc")] == [0, 2, 3]


def test_heldout_off_measures_nothing(project):  # noqa: F811
    from medssr.rl.run import run_train_stage

    p = load_params(ROOT / "params.yaml", {**TINY, "train.eval_every": None})
    report = run_train_stage(p, "stage1", _paths("stage1"))
    assert report["heldout"] == [] and json.loads((project / "reports/train_stage1_heldout.json").read_text()) == []
