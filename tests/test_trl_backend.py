"""TRL GRPO backend on the tiny random Llama: config from params, per-step MLflow metrics, strategies, resume, bad input."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from medssr.config import ConfigError, load_params
from medssr.records import Question, write_jsonl
from medssr.rl.run import PASSTHROUGH_MARKER, StagePaths, TrainError, run_train_stage
from medssr.rl.strategies import STRATEGIES, plan
from tests.dvc_yaml import cmd_args

ROOT = Path(__file__).resolve().parents[1]

# Tiny and fast: 1 prompt x 2 rollouts per step, 8 new tokens, no reference model (one test turns KL on).
TINY = {
    "train.num_generations": 2, "train.per_device_batch_size": 2, "train.max_completion_length": 8, "train.save_steps": 100,
    "train.stage1": {"max_steps": 1, "learning_rate": 1e-3, "beta": 0.0, "max_samples": 8},
    "train.stage2": {"max_steps": 1, "learning_rate": 1e-3, "beta": 0.0, "max_samples": 8},
}


@pytest.fixture(scope="module")
def medmcqa() -> list[Question]:
    from medssr.data.loaders import load_medmcqa
    from tests.conftest import RAW

    return load_medmcqa(RAW)[:24]


@pytest.fixture
def project(tmp_path, tiny_model_dir, medmcqa, mlflow_module_store, monkeypatch) -> Path:
    """A project root in tmp: F.4 prompt, labeled synthetic + real sets from MedMCQA rows, the tiny policy as model.dir."""
    root = tmp_path / "proj"
    (root / "prompts").mkdir(parents=True)
    shutil.copy(ROOT / "prompts" / "eval_f4.txt", root / "prompts" / "eval_f4.txt")
    syn = [dataclasses.replace(q, id=f"syn-{i}", source="synthetic", split="synthetic", votes=["B", "B", "C", None],
                               majority="B", agreement=0.5, n_valid=3) for i, q in enumerate(medmcqa[:12])]
    write_jsonl(root / "data/labeled/synthetic.jsonl", syn)
    write_jsonl(root / "data/prepared/train.jsonl", medmcqa[12:24])
    write_jsonl(root / "data/prepared/benchmarks/medmcqa.jsonl", medmcqa[:8])  # the held-out set of train.eval_every
    shutil.copytree(tiny_model_dir, root / "artifacts/models/policy")
    monkeypatch.setenv("MEDSSR_ROOT", str(root))
    return root


def _params(**over):
    return load_params(ROOT / "params.yaml", {**TINY, **over})


def _paths(stage: str, **over) -> StagePaths:
    """The stage's StagePaths as `dvc repro` passes them (its dvc.yaml cmd through stages/train.py), relative to the project."""
    args = argparse.ArgumentParser()
    script = _stage_script()
    script.add_args(args)
    paths = script.stage_paths(args.parse_args(cmd_args(stage)))
    return dataclasses.replace(paths, **over)


def _metric(run_id: str, name: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient().get_metric_history(run_id, name))


def _stage_run_id(stage: str) -> str:
    import mlflow

    runs = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.medssr_stage = '{stage}'",
                              order_by=["attributes.start_time DESC"], output_format="list")
    return runs[0].info.run_id


# ---- config -------------------------------------------------------------------------------------------------

def test_grpo_config_follows_params(tmp_path):
    from medssr.rl.trl_backend import grpo_config

    p = _params(**{"train.per_device_batch_size": 4, "train.stage1": {**TINY["train.stage1"], "beta": 0.001}})
    cfg = grpo_config(p.train, p.train.stage1, tmp_path, use_cpu=True)
    assert (cfg.num_generations, cfg.max_completion_length, cfg.temperature, cfg.top_p) == (2, 8, 1.0, 1.0)
    assert (cfg.learning_rate, cfg.beta, cfg.max_steps, cfg.loss_type) == (1e-3, 0.001, 1, "dapo")
    assert cfg.per_device_train_batch_size == 4 and cfg.generation_batch_size == 4
    assert cfg.bf16 is False and cfg.use_cpu is True and cfg.report_to == []
    assert cfg.save_steps == 100 and cfg.save_only_model is False and cfg.lr_scheduler_type == "constant"
    assert (cfg.adam_beta1, cfg.adam_beta2, cfg.weight_decay) == (0.9, 0.999, 0.01)  # the paper's verl AdamW, not TRL's defaults


def test_batch_that_splits_a_group_is_refused_when_params_load():
    with pytest.raises(ConfigError, match=r"train.per_device_batch_size: 3 x train.gradient_accumulation_steps 1 = 3 .* train.num_generations \(2\)"):
        _params(**{"train.per_device_batch_size": 3})


def test_kl_estimator_other_than_k3_is_refused_for_trl_when_params_load():
    with pytest.raises(ConfigError, match="train.kl_estimator"):
        _params(**{"train.kl_estimator": "k1"})


# ---- reward wrapper (no model) ---------------------------------------------------------------------------------

OPTS = json.dumps({"A": "aspirin", "B": "heparin", "C": "warfarin", "D": "insulin"})


def _done(letter: str | None) -> list[dict]:
    return [{"role": "assistant", "content": f"Reasoning... The answer is {letter}." if letter else "I cannot tell."}]


def test_offline_reward_logs_group_diversity_and_label_agreement():
    from medssr.rl.trl_backend import make_reward_fn

    logged: dict[str, float] = {}
    fn = make_reward_fn("majority", num_generations=4, stop_token_ids=[1])
    answers = ["A", "A", "A", "A", "A", "B", None, "C"]
    labels = ["A"] * 4 + ["B"] * 4
    scores = fn(prompts=["p"] * 8, completions=[_done(a) for a in answers], label=labels, options=[OPTS] * 8,
                completion_ids=[[1] * 5] * 8, log_metric=lambda k, v: logged.__setitem__(k, v))
    assert scores == [1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    assert logged["medssr/distinct_answers"] == pytest.approx((1 + 3) / 2)
    assert logged["medssr/all_agree_share"] == 0.5
    assert logged["medssr/valid_answer_share"] == pytest.approx((1 + 0.75) / 2)
    assert logged["medssr/pseudo_label_agreement"] == pytest.approx(5 / 8)
    assert logged["medssr/answer_entropy"] > 0 and logged["medssr/completion_tokens"] == 40


def test_online_vote_agreement_is_measured_against_the_group_majority():
    from medssr.rl.trl_backend import make_reward_fn

    logged: dict[str, float] = {}
    fn = make_reward_fn("online_vote", num_generations=4)
    answers = ["C", "C", "C", "A", "B", "B", None, "D"]
    prompts = ["p1"] * 4 + ["p2"] * 4
    scores = fn(prompts=prompts, completions=[_done(a) for a in answers], label=["A"] * 8, options=[OPTS] * 8,
                log_metric=lambda k, v: logged.__setitem__(k, v))
    assert scores[:4] == [1.0, 1.0, 1.0, 0.0] and scores[4:6] == [1.0, 1.0]
    assert logged["medssr/pseudo_label_agreement"] == pytest.approx(5 / 8)
    assert logged["medssr/offline_label_agreement"] == pytest.approx(1 / 8)


# ---- end to end on the tiny model ----------------------------------------------------------------------------

def test_stage1_logs_per_step_metrics_to_mlflow_and_saves_a_loadable_policy(project):
    from transformers import AutoModelForCausalLM

    # KL on: TRL rebuilds the reference model from the policy's path
    report = run_train_stage(_params(**{"train.stage1": {**TINY["train.stage1"], "max_steps": 2, "beta": 0.001}}), "stage1", _paths("stage1"))
    run_id = _stage_run_id("stage1")
    for name in ("reward_mean", "reward_std", "kl", "loss", "learning_rate", "completion_length", "distinct_answers",
                 "answer_entropy", "all_agree_share", "valid_answer_share", "pseudo_label_agreement", "step_time_s",
                 "tokens_per_s", "generation_s", "update_s"):
        assert [s for s, _ in _metric(run_id, f"train/stage1/{name}")] == [1, 2], name
    assert _metric(run_id, "train/stage1/completion_length")[0][1] <= 8
    assert report["global_step"] == 2 and report["data"] == "synthetic" and report["reward"] == "majority"
    saved = json.loads((project / "reports/train_stage1.json").read_text())
    assert saved["summary"]["steps_logged"] == 2
    assert [r["step"] for r in json.loads((project / "reports/train_stage1_steps.json").read_text())] == [1, 2]
    model = AutoModelForCausalLM.from_pretrained(project / "checkpoints/stage1")
    assert model.config.vocab_size == 49152 and (project / "checkpoints/stage1/tokenizer.json").exists()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_runs_both_stages(project, strategy):
    p = _params(**{"train.strategy": strategy})
    reports = [run_train_stage(p, s, _paths(s)) for s in ("stage1", "stage2")]
    for stage, report in zip(("stage1", "stage2"), reports, strict=True):
        data, reward = plan(strategy)[stage]
        marker = project / "checkpoints" / stage / PASSTHROUGH_MARKER
        assert (project / "checkpoints" / stage / "config.json").exists()
        assert marker.exists() == (data is None)
        if data is not None:
            assert report["global_step"] == 1 and report["data"] == data and report["reward"] == reward
    if strategy == "one_stage":
        assert reports[0]["dataset"]["by_kind"].keys() == {"synthetic", "real"}


# Resume: 4 steps, checkpoint every 2, KL on (kl_mean is one of the summary fields a lost history changed).
RESUME = {"train.stage1": {**TINY["train.stage1"], "max_steps": 4, "beta": 0.001}, "train.save_steps": 2}
# Excluded from the comparison: wall-clock timings and peak memory differ between any two runs, resumed or not.
NOT_DETERMINISTIC = ("step_time_s", "generation_s", "update_s", "tokens_per_s", "peak_rss_mb", "peak_gpu_mb")


def child_main() -> None:
    """The run that dies: SIGKILL (no cleanup of any kind) right after step 3 is logged, with checkpoint-2 on disk."""
    import os
    import signal

    import torch
    from transformers import TrainerCallback

    class KillAfterStep3(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if state.global_step == 3:
                os.kill(os.getpid(), signal.SIGKILL)

    torch.set_num_threads(1)
    run_train_stage(_params(**RESUME), "stage1", _paths("stage1"), callbacks=[KillAfterStep3()])


def _deterministic(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(NOT_DETERMINISTIC)} for r in rows]


def _runs_of(exp_name: str) -> list:
    import mlflow

    return mlflow.search_runs(search_all_experiments=True, output_format="list", order_by=["attributes.start_time ASC"],
                              filter_string=f"tags.medssr_stage = 'stage1' and tags.dvc_exp_name = '{exp_name}'")


def test_a_sigkilled_run_resumes_with_the_steps_and_summary_of_an_uninterrupted_one(project, tmp_path, monkeypatch, one_torch_thread):
    import os
    import signal
    import subprocess
    import sys

    ref_root = tmp_path / "ref"
    shutil.copytree(project, ref_root)
    monkeypatch.setenv("DVC_EXP_NAME", "uninterrupted")
    ref = run_train_stage(_params(**RESUME), "stage1", _paths("stage1", root=str(ref_root)))
    monkeypatch.setenv("DVC_EXP_NAME", "killed")
    child = subprocess.run([sys.executable, "-c", "from tests.test_trl_backend import child_main; child_main()"], cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}, timeout=600)
    assert child.returncode == -signal.SIGKILL
    assert [p.name for p in (project / ".cache/train/stage1").glob("checkpoint-*")] == ["checkpoint-2"]

    report = run_train_stage(_params(**RESUME), "stage1", _paths("stage1"))
    assert report["resumed_from"] == "checkpoint-2" and report["global_step"] == 4
    steps = json.loads((project / "reports/train_stage1_steps.json").read_text())
    ref_steps = json.loads((ref_root / "reports/train_stage1_steps.json").read_text())
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert _deterministic(steps) == _deterministic(ref_steps)
    summary = json.loads((project / "reports/train_stage1.json").read_text())["summary"]
    assert summary["steps_logged"] == 4 and summary.keys() == ref["summary"].keys()
    assert _deterministic([summary]) == _deterministic([ref["summary"]])

    # MLflow: the killed run is closed, the resumed run holds every step once, with the uninterrupted run's values
    (ref_run,), (killed, resumed) = _runs_of("uninterrupted"), _runs_of("killed")
    assert killed.info.status == "KILLED" and "is gone" in killed.data.tags["medssr_closed_reason"]
    assert resumed.info.status == "FINISHED" and resumed.data.tags["resumed_from"] == "checkpoint-2"
    assert resumed.data.tags["restored_steps"] == "2" and resumed.data.tags["medssr_replaces"] == killed.info.run_id
    assert [s for s, _ in _metric(killed.info.run_id, "train/stage1/reward_mean")] == [1, 2, 3]
    for name in ("reward_mean", "kl", "loss", "distinct_answers", "pseudo_label_agreement", "step_time_s"):
        got, want = _metric(resumed.info.run_id, f"train/stage1/{name}"), _metric(ref_run.info.run_id, f"train/stage1/{name}")
        assert [s for s, _ in got] == [1, 2, 3, 4], name
        if name not in NOT_DETERMINISTIC:
            assert got == want, name


def test_changed_params_discard_the_old_run_instead_of_resuming(tmp_path, tiny_model_dir, medmcqa):
    from medssr.rl.data import examples_from_questions
    from medssr.rl.run import prepare_run_dir, run_fingerprint

    examples, _ = examples_from_questions(medmcqa[:4], "real")
    fp = run_fingerprint(_params(), "stage1", str(tiny_model_dir), examples, "T {question}")
    assert fp == run_fingerprint(_params(**{"train.save_steps": 7, "train.stage2": {"max_steps": 9}}), "stage1", str(tiny_model_dir),
                                 examples, "T {question}")  # checkpoint cadence and the other stage do not matter
    run_dir = tmp_path / "run"
    assert prepare_run_dir(run_dir, fp) is False
    (run_dir / "checkpoint-1").mkdir()
    assert prepare_run_dir(run_dir, fp) is True and (run_dir / "checkpoint-1").exists()
    for changed in (run_fingerprint(_params(**{"train.temperature": 0.7}), "stage1", str(tiny_model_dir), examples, "T {question}"),
                    run_fingerprint(_params(), "stage1", str(tiny_model_dir), examples[:3], "T {question}"),
                    run_fingerprint(_params(), "stage1", str(tiny_model_dir), examples, "U {question}")):
        assert changed != fp
    assert prepare_run_dir(run_dir, "other") is False and not (run_dir / "checkpoint-1").exists()


def test_stage2_refuses_a_stage1_checkpoint_of_another_model(project, tiny_model_dir):
    from medssr.models import save_tiny_llama

    save_tiny_llama(project / "checkpoints/stage1", tokenizer_source=str(tiny_model_dir), hidden=32)
    with pytest.raises(TrainError, match=r"checkpoints/stage1/config\.json: checkpoint does not match the policy .*hidden_size 32 != 64"):
        run_train_stage(_params(), "stage2", _paths("stage2"))


def test_stage2_without_stage1_says_what_to_run(project):
    with pytest.raises(TrainError, match="stage I checkpoint missing: run `dvc repro stage1`"):
        run_train_stage(_params(), "stage2", _paths("stage2"))


def test_online_vote_on_openrlhf_is_a_config_error(project):
    with pytest.raises(ConfigError, match="train.strategy: 'online_vote'"):
        run_train_stage(_params(**{"train.strategy": "online_vote", "train.backend": "openrlhf"}), "stage1", _paths("stage1"))


def _stage_script():
    spec = importlib.util.spec_from_file_location("stage_train", ROOT / "stages" / "train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_stage_script_trains_stage1_from_params_file(project, capsys):
    params_file = project / "params.yaml"
    raw = (ROOT / "params.yaml").read_text()
    params_file.write_text(raw.replace("max_completion_length: 64", "max_completion_length: 8")
                              .replace("stage1: {max_steps: 4,", "stage1: {max_steps: 1,"))
    assert _stage_script().main([*cmd_args("stage1"), "--params", str(params_file)]) == 0
    assert "[train] stage1: two_stage/synthetic/majority on trl: 1 steps" in capsys.readouterr().out
    assert (project / "checkpoints/stage1/model.safetensors").exists()


def test_openrlhf_dry_run_prints_the_command_and_writes_the_prompt_file(project, capsys):
    p = _params(**{"train.backend": "openrlhf", "train.global_batch_size": 4, "train.rollout_batch_size": 4, "train.micro_batch_size": 1,
                   "train.openrlhf": {"gpus_per_node": 1, "vllm_num_engines": 1}})
    run_train_stage(p, "stage1", _paths("stage1"), dry_run=True)
    out = capsys.readouterr().out
    assert "-- python3 -m openrlhf.cli.train_ppo_ray" in out and "--data.prompt_dataset data/rl/stage1.jsonl" in out
    assert f"--actor.model_name_or_path {project / 'artifacts/models/policy'}" in out
    assert len((project / "data/rl/stage1.jsonl").read_text().splitlines()) == p.train.stage1.max_steps * p.train.rollout_batch_size
    assert not (project / "checkpoints/stage1").exists()


def test_stage_script_exits_1_with_the_param_to_fix(project, capsys):
    params_file = project / "params.yaml"
    import yaml

    from medssr.config import set_dotted

    raw = yaml.safe_load((ROOT / "params.yaml").read_text().replace("backend: trl", "backend: openrlhf"))
    # 8 GPUs per node with 4 colocated vLLM engines is an invalid layout
    set_dotted(raw, "train.openrlhf.vllm_num_engines", 4)
    params_file.write_text(yaml.safe_dump(raw))
    assert _stage_script().main([*cmd_args("stage1"), "--dry-run", "--params", str(params_file)]) == 1
    assert "train.openrlhf.vllm_num_engines" in capsys.readouterr().err


@pytest.mark.slow
def test_smollm2_stage1_reward_and_diversity_curves_land_in_mlflow(smol_model_dir, project):
    """The embedded policy (SmolLM2-135M-Instruct), 2 stage-I steps of G=4 rollouts x 16 tokens, KL on."""
    p = _params(**{"train.num_generations": 4, "train.per_device_batch_size": 4, "train.max_completion_length": 16,
                   "train.stage1": {"max_steps": 2, "learning_rate": 2e-6, "beta": 0.001, "max_samples": 8}})
    report = run_train_stage(p, "stage1", _paths("stage1", policy=str(smol_model_dir)))
    run_id = _stage_run_id("stage1")
    for name in ("reward_mean", "distinct_answers", "answer_entropy", "all_agree_share", "valid_answer_share",
                 "pseudo_label_agreement", "kl", "step_time_s", "generation_s", "tokens_per_s"):
        points = _metric(run_id, f"train/stage1/{name}")
        assert [s for s, _ in points] == [1, 2], name
    assert all(0.0 <= v <= 4.0 for _, v in _metric(run_id, "train/stage1/distinct_answers"))
    assert report["global_step"] == 2 and (project / "checkpoints/stage1/model.safetensors").stat().st_size > 100e6


# ---- rollouts through medssr's sampler (issue #16.2) ----------------------------------------------------------

def test_rollout_sampler_auto_picks_ours_only_on_cpu_with_the_fast_path():
    from medssr.rl.rollouts import choose_rollout_sampler

    assert choose_rollout_sampler("auto", on_cpu=True, fast_path=True) == "hf"
    assert choose_rollout_sampler("auto", on_cpu=False, fast_path=True) == "trl"
    assert choose_rollout_sampler("auto", on_cpu=True, fast_path=False) == "trl"
    assert choose_rollout_sampler("auto", on_cpu=True, fast_path=True, unsupported=["min_p=0.1"]) == "trl"
    assert choose_rollout_sampler("trl", on_cpu=True, fast_path=True) == "trl"
    assert choose_rollout_sampler("hf", on_cpu=False, fast_path=False) == "hf"  # asked for: the generic decode loop


def test_rollout_sampler_refuses_settings_it_cannot_sample_with():
    from medssr.rl.rollouts import choose_rollout_sampler

    with pytest.raises(ConfigError, match=r"train.rollout_sampler: 'hf' cannot sample with repetition_penalty=1.2"):
        choose_rollout_sampler("hf", on_cpu=True, fast_path=True, unsupported=["repetition_penalty=1.2"])
    with pytest.raises(ConfigError, match="train.rollout_sampler: expected one of auto, hf, trl, got 'vllm'"):
        choose_rollout_sampler("vllm", on_cpu=True, fast_path=True)


def test_prompt_groups_are_the_distinct_prompts_of_trls_repeated_order():
    from medssr.rl.rollouts import prompt_groups

    assert prompt_groups([[1, 2], [1, 2], [3], [3]], 2) == [[1, 2], [3]]
    assert prompt_groups([[1, 2], [3], [1, 2], [3]], 2) is None  # not G in a row: each row is its own prompt
    assert prompt_groups([[1], [1], [1]], 2) is None


def _tiny_run(medmcqa, model_dir, run_dir, rollout: str, steps: int = 2, callbacks=()):
    from medssr.rl import trl_backend
    from medssr.rl.data import examples_from_questions, load_prompt_template, to_trl_dataset

    examples, _ = examples_from_questions(medmcqa[:4], "real")
    p = _params(**{"train.stage1": {**TINY["train.stage1"], "max_steps": steps}})
    return trl_backend.train(model_dir, to_trl_dataset(examples, load_prompt_template()), "gold", p.train, p.train.stage1, stage="stage1",
                             run_dir=run_dir / "run", out_dir=run_dir / "out", rollout_sampler=rollout, callbacks=callbacks)


def test_hf_rollouts_train_and_log_the_same_metrics_as_trl_generation(tiny_model_dir, medmcqa, tmp_path, one_torch_thread):
    ours = _tiny_run(medmcqa, tiny_model_dir, tmp_path / "hf", "hf")
    theirs = _tiny_run(medmcqa, tiny_model_dir, tmp_path / "trl", "trl")
    assert (ours["rollout_sampler"], theirs["rollout_sampler"]) == ("hf", "trl")
    assert ours["global_step"] == theirs["global_step"] == 2
    assert [sorted(r) for r in ours["history"]] == [sorted(r) for r in theirs["history"]]
    for name in ("reward_mean", "completion_length", "clipped_ratio", "distinct_answers", "generation_s", "tokens_per_s"):
        assert name in ours["history"][0], name
    assert all(0 < r["completion_length"] <= 8 for r in ours["history"])
    assert (tmp_path / "hf/out/model.safetensors").exists()


def test_auto_rollouts_on_cpu_take_our_sampler_for_a_llama_policy(project):
    import mlflow

    report = run_train_stage(_params(), "stage1", _paths("stage1"))
    assert report["global_step"] == 1
    assert mlflow.get_run(_stage_run_id("stage1")).data.tags["rollout_sampler"] == "hf"


def test_hf_rollouts_give_identical_weights_in_two_runs(tiny_model_dir, medmcqa, tmp_path, one_torch_thread):
    first = _tiny_run(medmcqa, tiny_model_dir, tmp_path / "a", "hf")
    second = _tiny_run(medmcqa, tiny_model_dir, tmp_path / "b", "hf")
    assert (tmp_path / "a/out/model.safetensors").read_bytes() == (tmp_path / "b/out/model.safetensors").read_bytes()
    assert _deterministic(first["history"]) == _deterministic(second["history"])


def test_hf_rollouts_sample_from_the_weights_of_the_current_step(tiny_model_dir, medmcqa, tmp_path, one_torch_thread):
    """Step 2's completions are what a fresh sampler draws from the weights after step 1, not from the initial ones."""
    import torch
    from transformers import AutoModelForCausalLM

    from medssr.models import load_tokenizer
    from medssr.rl import trl_backend
    from medssr.rl.data import examples_from_questions, load_prompt_template, to_trl_dataset
    from medssr.rl.rollouts import PolicyRollouts

    class Recorded:
        """The trainer's own rollouts, plus a copy of the weights each call sampled from."""

        def __init__(self, inner):
            self.inner, self.calls = inner, []

        def __call__(self, prompt_ids, num_generations, *, step, process=0):
            weights = {k: v.detach().clone() for k, v in self.inner.model.state_dict().items()}
            out = self.inner(prompt_ids, num_generations, step=step, process=process)
            self.calls.append({"step": step, "prompts": [list(p) for p in prompt_ids], "out": out, "weights": weights,
                               "training_after": self.inner.model.training})
            return out

    def first_of_group(prompts, completions, **kwargs) -> list[float]:
        # the random tiny model never answers, so the real rewards are all 0 (no gradient); this one always varies in a group
        return [float(i % 2 == 0) for i in range(len(completions))]

    examples, _ = examples_from_questions(medmcqa[:4], "real")
    p = _params(**{"train.stage1": {**TINY["train.stage1"], "max_steps": 2}})
    trainer = trl_backend.build_trainer(tiny_model_dir, to_trl_dataset(examples, load_prompt_template()), "gold", p.train, p.train.stage1,
                                        run_dir=tmp_path / "run", reward_funcs=[first_of_group])
    assert trl_backend.attach_rollouts(trainer, "hf", tiny_model_dir) == "hf"
    trainer.rollouts = rec = Recorded(trainer.rollouts)
    trainer.train()
    assert [c["step"] for c in rec.calls] == [0, 1] and all(c["training_after"] for c in rec.calls)
    second = rec.calls[1]
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert any(not torch.equal(initial.state_dict()[k], w) for k, w in second["weights"].items())  # step 1 changed the policy

    def fresh_rollouts(weights):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        if weights is not None:
            model.load_state_dict(weights)
        return PolicyRollouts(model, load_tokenizer(str(tiny_model_dir)), str(tiny_model_dir), seed=p.train.seed, temperature=1.0,
                              top_p=1.0, top_k=0, max_new_tokens=8)(second["prompts"], 2, step=1)

    assert fresh_rollouts(second["weights"]) == second["out"]
    assert fresh_rollouts(None) != second["out"]  # a sampler holding the initial weights would have drawn these
