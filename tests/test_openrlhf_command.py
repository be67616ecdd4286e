"""The OpenRLHF launch command: flags checked against the 0.11.2 argparse source, paper golden commands, TensorBoard -> MLflow."""

from __future__ import annotations

import ast
import json
import shlex
from pathlib import Path

import pytest

from medssr.config import ConfigError, load_params
from medssr.rl import openrlhf_backend as orl
from tests.openrlhf_flags import WheelUnavailable, defined_flags, load_specs, replica_parser

ROOT = Path(__file__).resolve().parents[1]

# Paper Table 8 (Appendix C.2), as params overrides: the lead writes params/paper-*.yaml from these.
# verl's default loss aggregation (the paper's trainer) is token-mean = TRL "dapo" = OpenRLHF token-mean.
# max_steps 335 = one pass over the 43K set at 128 prompts per update.
QWEN3_8B = {
    "model.policy": "Qwen/Qwen3-8B-Base", "train.backend": "openrlhf", "train.num_generations": 8, "train.temperature": 1.0,
    "train.top_p": 1.0, "train.max_prompt_length": 1024, "train.max_completion_length": 4096, "train.rollout_batch_size": 128,
    "train.global_batch_size": 128, "train.micro_batch_size": 8, "train.loss_type": "dapo", "train.kl_estimator": "k3",
    "train.save_steps": 20,
    "train.stage1": {"max_steps": 335, "learning_rate": 2e-6, "beta": 1e-3, "max_samples": None},
    "train.stage2": {"max_steps": 335, "learning_rate": 2e-6, "beta": 1e-3, "max_samples": None},
    "train.openrlhf": {"ray_address": "http://127.0.0.1:8265", "working_dir": ".", "num_nodes": 1, "gpus_per_node": 8,
                       "vllm_num_engines": 8, "vllm_tensor_parallel_size": 1, "vllm_gpu_memory_utilization": 0.6, "zero_stage": 3,
                       "colocate": True, "extra_args": []},
}
LLAMA31_8B = {
    **QWEN3_8B,
    "model.policy": "meta-llama/Llama-3.1-8B-Instruct",
    "train.stage1": {"max_steps": 335, "learning_rate": 3e-7, "beta": 0.0, "max_samples": None},
    "train.stage2": {"max_steps": 335, "learning_rate": 3e-7, "beta": 0.0, "max_samples": None},
}

SHARED = "/shared/medssr"

QWEN_STAGE1_FLAGS = """
--actor.model_name_or_path Qwen/Qwen3-8B-Base --data.prompt_dataset data/rl/stage1.jsonl --data.input_key prompt
--data.label_key label --data.apply_chat_template --data.max_len 5120 --data.max_samples 42880 --rollout.max_new_tokens 4096
--rollout.n_samples_per_prompt 8 --rollout.batch_size 128 --rollout.micro_batch_size 8 --rollout.temperature 1.0
--rollout.top_p 1.0 --train.batch_size 1024 --train.micro_batch_size 8 --train.num_episodes 1 --train.max_epochs 1
--train.seed 0 --algo.advantage.estimator group_norm --actor.loss_agg_mode token-mean --actor.adam.lr 2e-06
--actor.lr_scheduler constant --actor.lr_warmup_ratio 0.0 --algo.kl.init_coef 0.001 --algo.kl.use_loss --algo.kl.estimator k3
--actor.num_nodes 1 --actor.num_gpus_per_node 8 --ref.num_nodes 1 --ref.num_gpus_per_node 8 --vllm.num_engines 8
--vllm.tensor_parallel_size 1 --vllm.gpu_memory_utilization 0.6 --train.colocate_all --vllm.enable_sleep --ds.enable_sleep
--ds.zero_stage 3 --ds.param_dtype bf16 --actor.gradient_checkpointing_enable --reward.remote_url medssr/rl/openrlhf_reward.py
--ckpt.output_dir /shared/medssr/checkpoints/stage1 --ckpt.path /shared/medssr/.cache/train/stage1/ckpt --ckpt.save_steps 20
--ckpt.max_num 2 --ckpt.load_enable --logger.logging_steps 1 --logger.tensorboard_dir /shared/medssr/.cache/train/stage1/tb
--logger.wandb.run_name medssr-stage1
"""

LLAMA_STAGE2_FLAGS = """
--actor.model_name_or_path /shared/medssr/checkpoints/stage1 --data.prompt_dataset data/rl/stage2.jsonl --data.input_key prompt
--data.label_key label --data.apply_chat_template --data.max_len 5120 --data.max_samples 42880 --rollout.max_new_tokens 4096
--rollout.n_samples_per_prompt 8 --rollout.batch_size 128 --rollout.micro_batch_size 8 --rollout.temperature 1.0
--rollout.top_p 1.0 --train.batch_size 1024 --train.micro_batch_size 8 --train.num_episodes 1 --train.max_epochs 1
--train.seed 0 --algo.advantage.estimator group_norm --actor.loss_agg_mode token-mean --actor.adam.lr 3e-07
--actor.lr_scheduler constant --actor.lr_warmup_ratio 0.0 --algo.kl.init_coef 0.0
--actor.num_nodes 1 --actor.num_gpus_per_node 8 --vllm.num_engines 8
--vllm.tensor_parallel_size 1 --vllm.gpu_memory_utilization 0.6 --train.colocate_all --vllm.enable_sleep --ds.enable_sleep
--ds.zero_stage 3 --ds.param_dtype bf16 --actor.gradient_checkpointing_enable --reward.remote_url medssr/rl/openrlhf_reward.py
--ckpt.output_dir /shared/medssr/checkpoints/stage2 --ckpt.path /shared/medssr/.cache/train/stage2/ckpt --ckpt.save_steps 20
--ckpt.max_num 2 --ckpt.load_enable --logger.logging_steps 1 --logger.tensorboard_dir /shared/medssr/.cache/train/stage2/tb
--logger.wandb.run_name medssr-stage2
"""


@pytest.fixture(scope="module")
def specs():
    try:
        return load_specs()
    except WheelUnavailable as e:
        pytest.skip(f"OpenRLHF 0.11.2 wheel unavailable, cannot check flags: {e}")


def _params(overrides: dict):
    return load_params(ROOT / "params.yaml", overrides)


def _paths(stage: str, model: str) -> orl.RunPaths:
    return orl.RunPaths(model=model, dataset=f"data/rl/{stage}.jsonl", output_dir=f"{SHARED}/checkpoints/{stage}",
                        ckpt_path=f"{SHARED}/.cache/train/{stage}/ckpt", tensorboard_dir=f"{SHARED}/.cache/train/{stage}/tb")


def _command(overrides: dict, stage: str, model: str, n_prompts: int = 43000) -> list[str]:
    p = _params(overrides)
    return orl.build_command(p.train, getattr(p.train, stage), _paths(stage, model), n_prompts=n_prompts,
                             run_name=f"medssr-{stage}", working_dir=SHARED)


def _inner(cmd: list[str]) -> list[str]:
    i = cmd.index(orl.ENTRYPOINT)
    assert cmd[i - 2 : i] == ["python3", "-m"]
    return cmd[i + 1 :]


def test_wheel_source_defines_the_dotted_grpo_flags(specs):
    flags = defined_flags(specs)
    assert {"--algo.advantage.estimator", "--rollout.n_samples_per_prompt", "--actor.adam.lr", "--critic.adam.lr"} <= flags
    assert "--advantage_estimator" not in flags  # the pre-0.10.2 names are gone


@pytest.mark.parametrize("overrides,stage,model", [
    (QWEN3_8B, "stage1", "Qwen/Qwen3-8B-Base"),
    (QWEN3_8B, "stage2", f"{SHARED}/checkpoints/stage1"),
    (LLAMA31_8B, "stage1", "meta-llama/Llama-3.1-8B-Instruct"),
    (LLAMA31_8B, "stage2", f"{SHARED}/checkpoints/stage1"),
    ({**QWEN3_8B, "train.openrlhf": {**QWEN3_8B["train.openrlhf"], "colocate": False, "vllm_num_engines": 4,
                                     "extra_args": ["--ds.adam_offload"]}, "train.loss_type": "dr_grpo", "train.kl_estimator": "k2"},
     "stage1", "Qwen/Qwen3-8B-Base"),
])
def test_every_emitted_flag_parses_with_train_ppo_ray_argparse(specs, overrides, stage, model):
    flags = _inner(_command(overrides, stage, model))
    emitted = {t for t in flags if t.startswith("--")}
    assert emitted <= defined_flags(specs), f"undefined: {sorted(emitted - defined_flags(specs))}"
    ns, unknown = replica_parser(specs).parse_known_args(flags)  # types, choices and nargs as train_ppo_ray checks them
    assert unknown == []
    assert getattr(ns, "actor.model_name_or_path") == model


def test_qwen3_8b_stage1_golden_command():
    cmd = _command(QWEN3_8B, "stage1", "Qwen/Qwen3-8B-Base")
    assert cmd[:5] == ["ray", "job", "submit", "--address", "http://127.0.0.1:8265"]
    env = json.loads(cmd[cmd.index("--runtime-env-json") + 1])
    assert env["working_dir"] == SHARED and ".venv*" in env["excludes"] and "data/raw" in env["excludes"]
    assert cmd[cmd.index("--runtime-env-json") + 2 : cmd.index(orl.ENTRYPOINT) + 1] == ["--", "python3", "-m", orl.ENTRYPOINT]
    assert _inner(cmd) == shlex.split(QWEN_STAGE1_FLAGS)


def test_llama31_8b_stage2_golden_command_has_no_reference_model():
    assert _inner(_command(LLAMA31_8B, "stage2", f"{SHARED}/checkpoints/stage1")) == shlex.split(LLAMA_STAGE2_FLAGS)


def test_golden_command_parses_to_table8_values(specs):
    ns = replica_parser(specs).parse_args(shlex.split(QWEN_STAGE1_FLAGS))
    v = vars(ns)
    assert v["rollout.n_samples_per_prompt"] == 8 and v["rollout.temperature"] == 1.0 and v["rollout.top_p"] == 1.0
    assert v["actor.adam.lr"] == 2e-6 and v["algo.kl.init_coef"] == 1e-3 and v["algo.kl.use_loss"] is True
    assert v["data.max_len"] == 1024 + 4096 and v["rollout.max_new_tokens"] == 4096
    assert v["rollout.batch_size"] == 128 and v["train.batch_size"] == 128 * 8 and v["train.micro_batch_size"] == 8
    assert v["algo.advantage.estimator"] == "group_norm"


def test_empty_ray_address_runs_the_module_directly():
    overrides = {**QWEN3_8B, "train.openrlhf": {**QWEN3_8B["train.openrlhf"], "ray_address": ""}}
    cmd = _command(overrides, "stage1", "Qwen/Qwen3-8B-Base")
    assert cmd[:3] == ["python3", "-m", orl.ENTRYPOINT]


def test_max_steps_beyond_the_dataset_become_episodes():
    assert orl.episodes_and_samples(max_steps=10, prompts_per_update=128, n_prompts=500) == (3, 500)
    assert orl.episodes_and_samples(max_steps=2, prompts_per_update=128, n_prompts=500) == (1, 256)


def test_colocate_needs_as_many_vllm_gpus_as_actor_gpus():
    bad = {**QWEN3_8B, "train.openrlhf": {**QWEN3_8B["train.openrlhf"], "vllm_num_engines": 4}}
    with pytest.raises(ConfigError, match="train.openrlhf.vllm_num_engines"):
        _command(bad, "stage1", "Qwen/Qwen3-8B-Base")


def test_micro_batches_must_tile_the_update_batch():
    with pytest.raises(ConfigError, match="train.global_batch_size"):
        _command({**QWEN3_8B, "train.micro_batch_size": 48}, "stage1", "Qwen/Qwen3-8B-Base")


def test_unsupported_loss_type_names_the_param():
    with pytest.raises(ConfigError, match="train.loss_type"):
        _command({**QWEN3_8B, "train.loss_type": "cispo"}, "stage1", "Qwen/Qwen3-8B-Base")


def test_reward_file_the_command_points_at_defines_reward_func():
    path = ROOT / orl.REWARD_FILE
    assert path.exists(), f"{path} missing"
    funcs = {n.name: n for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)}
    assert "reward_func" in funcs
    assert [a.arg for a in funcs["reward_func"].args.args[:3]] == ["queries", "prompts", "labels"]


def test_format_command_round_trips_through_the_shell():
    cmd = _command(QWEN3_8B, "stage1", "Qwen/Qwen3-8B-Base")
    assert shlex.split(orl.format_command(cmd).replace("\\\n", " ")) == cmd


def _write_events(log_dir: Path, scalars: dict[str, list[tuple[int, float]]]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(log_dir=str(log_dir))
    steps = sorted({s for pts in scalars.values() for s, _ in pts})
    for step in steps:
        for tag, pts in scalars.items():
            for s, v in pts:
                if s == step:
                    w.add_scalar(tag, v, s)
    w.close()


def test_tensorboard_scalars_reach_mlflow_under_stage_names(tmp_path, mlflow_module_store):
    from mlflow.tracking import MlflowClient

    from medssr import tracking

    tb = tmp_path / "tb"
    _write_events(tb / "medssr-stage1", {
        "train/rollout/reward_mean": [(1, 0.25), (2, 0.5), (3, 0.75)],
        "train/kl": [(1, 0.0), (2, 0.01), (3, 0.02)],
        "train/policy_loss": [(1, 0.1), (2, 0.2), (3, 0.3)],
        "train/timing/step_total": [(1, 10.0), (2, 10.0), (3, 10.0)],
        "train/rollout/response_length_mean": [(1, 100.0), (2, 100.0), (3, 100.0)],
        "train/custom_extra": [(1, 7.0)],
    })
    params = _params({})
    with tracking.stage_run("stage1", params) as mlflow:
        run_id = mlflow.active_run().info.run_id
        rows = orl.tensorboard_to_mlflow(tb, "stage1", mlflow, samples_per_step=1024)
    client = MlflowClient(mlflow_module_store)
    reward = [(m.step, m.value) for m in client.get_metric_history(run_id, "train/stage1/reward_mean")]
    assert sorted(reward) == [(1, 0.25), (2, 0.5), (3, 0.75)]
    assert [m.value for m in client.get_metric_history(run_id, "train/stage1/loss")] == pytest.approx([0.1, 0.2, 0.3])
    assert client.get_metric_history(run_id, "train/stage1/orl_custom_extra")[0].value == 7.0
    assert rows[0]["tokens_per_s"] == pytest.approx(100.0 * 1024 / 10.0)


def test_resumed_tensorboard_run_keeps_the_rewritten_values(tmp_path):
    tb = tmp_path / "tb"
    _write_events(tb / "medssr-stage1", {"train/rollout/reward_mean": [(1, 0.1), (2, 0.2), (3, 0.3)]})
    _write_events(tb / "medssr-stage1", {"train/rollout/reward_mean": [(3, 0.9), (4, 1.0)]})  # resumed after step 2
    rows = orl.tensorboard_history(orl.read_tensorboard(tb))
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["reward_mean"] for r in rows] == pytest.approx([0.1, 0.2, 0.9, 1.0])


FAKE_TRAIN_PPO_RAY = '''
"""Stand-in for openrlhf.cli.train_ppo_ray (GPU-only): reads our argv and prompt file, writes what OpenRLHF writes."""
import argparse, json, os, shutil, sys
from torch.utils.tensorboard import SummaryWriter
ap = argparse.ArgumentParser()
for f in ("--actor.model_name_or_path", "--data.prompt_dataset", "--ckpt.output_dir", "--logger.tensorboard_dir",
          "--logger.wandb.run_name", "--data.max_samples"):
    ap.add_argument(f)
args, _ = ap.parse_known_args()
a = vars(args)
rows = [json.loads(l) for l in open(a["data.prompt_dataset"])]
assert all(r["prompt"][0]["role"] == "user" and r["label"] for r in rows), "bad prompt rows"
w = SummaryWriter(os.path.join(a["logger.tensorboard_dir"], a["logger.wandb.run_name"]))
for step in (1, 2):
    w.add_scalar("train/rollout/reward_mean", 0.25 * step, step)
    w.add_scalar("train/kl", 0.001 * step, step)
    w.add_scalar("train/valid_answer", 0.5, step)
    w.add_scalar("train/timing/step_total", 2.0, step)
w.close()
if os.environ.get("FAKE_OPENRLHF_FAIL"):
    print("CUDA error: out of memory"); sys.exit(3)
shutil.copytree(a["actor.model_name_or_path"], a["ckpt.output_dir"], dirs_exist_ok=True)
print(f"trained on {len(rows)} prompts")
'''


@pytest.fixture
def orl_project(tmp_path, tiny_model_dir, mlflow_module_store, monkeypatch):
    """A project root using the openrlhf backend, with a stand-in train_ppo_ray module on PYTHONPATH."""
    import shutil
    import sys

    from medssr.data.loaders import load_medmcqa
    from medssr.records import write_jsonl
    from tests.conftest import RAW

    root = tmp_path / "proj"
    (root / "prompts").mkdir(parents=True)
    shutil.copy(ROOT / "prompts" / "eval_f4.txt", root / "prompts" / "eval_f4.txt")
    write_jsonl(root / "data/prepared/train.jsonl", load_medmcqa(RAW)[:6])
    shutil.copytree(tiny_model_dir, root / "artifacts/models/policy")
    fake = tmp_path / "fake_openrlhf"
    (fake / "openrlhf" / "cli").mkdir(parents=True)
    (fake / "openrlhf" / "__init__.py").write_text("")
    (fake / "openrlhf" / "cli" / "__init__.py").write_text("")
    (fake / "openrlhf" / "cli" / "train_ppo_ray.py").write_text(FAKE_TRAIN_PPO_RAY)
    monkeypatch.setenv("PYTHONPATH", str(fake))
    monkeypatch.setenv("MEDSSR_OPENRLHF_PYTHON", sys.executable)
    monkeypatch.setenv("MEDSSR_ROOT", str(root))
    return root


def _orl_params():
    return _params({"train.backend": "openrlhf", "train.strategy": "supervised", "train.global_batch_size": 2,
                    "train.rollout_batch_size": 2, "train.micro_batch_size": 1, "train.num_generations": 2,
                    "train.stage2": {"max_steps": 2, "learning_rate": 1e-6, "beta": 0.0, "max_samples": None},
                    "train.openrlhf": {"ray_address": "", "gpus_per_node": 1, "vllm_num_engines": 1}})


def test_openrlhf_stage_runs_the_command_and_bridges_its_tensorboard_to_mlflow(orl_project):
    from mlflow.tracking import MlflowClient

    from medssr.rl.run import run_train_stage

    run_train_stage(_orl_params(), "stage1")  # supervised: stage1 is a pass-through
    report = run_train_stage(_orl_params(), "stage2")
    assert report["global_step"] == 2 and report["summary"]["reward_mean_last"] == 0.5
    assert (orl_project / "checkpoints/stage2/config.json").exists()
    assert "trained on 6 prompts" in (orl_project / ".cache/train/stage2/openrlhf.log").read_text()
    client = MlflowClient()
    run = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.medssr_stage = 'stage2'",
                             order_by=["attributes.start_time DESC"])[0]
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/stage2/reward_mean")] == [(1, 0.25), (2, 0.5)]
    assert client.get_metric_history(run.info.run_id, "train/stage2/valid_answer_share")[0].value == 0.5


def test_a_failed_openrlhf_run_names_its_log(orl_project, monkeypatch):
    from medssr.rl.run import TrainError, run_train_stage

    monkeypatch.setenv("FAKE_OPENRLHF_FAIL", "1")
    run_train_stage(_orl_params(), "stage1")
    with pytest.raises(TrainError, match=r"\.cache/train/stage2/openrlhf\.log: OpenRLHF exited with status 3"):
        run_train_stage(_orl_params(), "stage2")
