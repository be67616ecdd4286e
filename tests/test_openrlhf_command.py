"""The OpenRLHF launch command: flags checked against the 0.11.2 argparse source, paper golden commands, TensorBoard -> MLflow."""

from __future__ import annotations

import ast
import json
import shlex
from pathlib import Path

import pytest

from medssr.config import ConfigError, load_params
from medssr.rl import openrlhf_backend as orl
from tests.openrlhf_flags import (
    WheelUnavailable,
    defined_flags,
    find_wheel,
    parse_specs,
    ray_init_env_keys,
    read_source,
    replica_parser,
    string_constants,
)

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
--train.seed 0 --algo.advantage.estimator group_norm --actor.loss_agg_mode token-mean --actor.adam.lr 2e-06 --actor.adam.betas 0.9 0.999
--actor.adam.weight_decay 0.01 --actor.lr_scheduler constant --actor.lr_warmup_ratio 0.0 --algo.kl.init_coef 0.001 --algo.kl.use_loss --algo.kl.estimator k3
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
--train.seed 0 --algo.advantage.estimator group_norm --actor.loss_agg_mode token-mean --actor.adam.lr 3e-07 --actor.adam.betas 0.9 0.999
--actor.adam.weight_decay 0.01 --actor.lr_scheduler constant --actor.lr_warmup_ratio 0.0 --algo.kl.init_coef 0.0
--actor.num_nodes 1 --actor.num_gpus_per_node 8 --vllm.num_engines 8
--vllm.tensor_parallel_size 1 --vllm.gpu_memory_utilization 0.6 --train.colocate_all --vllm.enable_sleep --ds.enable_sleep
--ds.zero_stage 3 --ds.param_dtype bf16 --actor.gradient_checkpointing_enable --reward.remote_url medssr/rl/openrlhf_reward.py
--ckpt.output_dir /shared/medssr/checkpoints/stage2 --ckpt.path /shared/medssr/.cache/train/stage2/ckpt --ckpt.save_steps 20
--ckpt.max_num 2 --ckpt.load_enable --logger.logging_steps 1 --logger.tensorboard_dir /shared/medssr/.cache/train/stage2/tb
--logger.wandb.run_name medssr-stage2
"""


@pytest.fixture(scope="module")
def wheel():
    try:
        return find_wheel()
    except WheelUnavailable as e:
        pytest.skip(f"OpenRLHF 0.11.2 wheel unavailable, cannot check against its source: {e}")


@pytest.fixture(scope="module")
def specs(wheel):
    return parse_specs(read_source(wheel))


def _params(overrides: dict):
    return load_params(ROOT / "params.yaml", overrides)


def _paths(stage: str, model: str) -> orl.RunPaths:
    return orl.RunPaths(model=model, dataset=f"data/rl/{stage}.jsonl", output_dir=f"{SHARED}/checkpoints/{stage}",
                        ckpt_path=f"{SHARED}/.cache/train/{stage}/ckpt", tensorboard_dir=f"{SHARED}/.cache/train/{stage}/tb")


def _command(overrides: dict, stage: str, model: str, n_prompts: int | None = None) -> list[str]:
    p = _params(overrides)
    stage_cfg = getattr(p.train, stage)
    n = orl.stage_prompt_count(p.train, stage_cfg) if n_prompts is None else n_prompts
    return orl.build_command(p.train, stage_cfg, _paths(stage, model), n_prompts=n, run_name=f"medssr-{stage}", working_dir=SHARED)


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
    assert env["working_dir"] == SHARED and {".venv*", "/data/raw", "/data/eval", "/mlartifacts", ".cache"} <= set(env["excludes"])
    assert "env_vars" not in env
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


def _openrlhf_steps(ns: dict) -> tuple[int, int, bool]:
    """(rollouts, optimizer steps, last rollout partial) of a parsed train_ppo_ray argv over ``max_samples`` prompts.

    OpenRLHF 0.11.2: a rollout is ``--rollout.batch_size`` prompts of the shuffled file, one global step each, every
    episode ending with whatever is left; its scheduler counts prompts x n_samples // --train.batch_size x episodes.
    """
    n, episodes = ns["data.max_samples"], ns["train.num_episodes"]
    rollouts = -(-n // ns["rollout.batch_size"]) * episodes
    updates = n * ns["rollout.n_samples_per_prompt"] // ns["train.batch_size"] * episodes * ns["train.max_epochs"]
    return rollouts, updates, n % ns["rollout.batch_size"] != 0


def _export(tmp_path, questions: int, overrides: dict) -> tuple[dict, list[str]]:
    from medssr.rl.data import RLExample

    p = _params(overrides)
    examples = [RLExample(id=f"q{i}", kind="real", question=f"Q{i}?\nA. a\nB. b", options={"A": "a", "B": "b"}, label="A")
                for i in range(questions)]
    path = tmp_path / "stage1.jsonl"
    report = orl.export_prompts(examples, "{question}", path, p.train, p.train.stage1, tokenizer=None)
    return report, [json.loads(line)["id"] for line in path.read_text().splitlines()]


@pytest.mark.parametrize("questions", [42000, 50000])
def test_paper_stage_trains_335_updates_in_one_episode_whatever_the_question_count(tmp_path, specs, questions):
    p = _params(QWEN3_8B)
    report, ids = _export(tmp_path, questions, QWEN3_8B)
    assert report["exported"] == len(ids) == 335 * 128
    ns = vars(replica_parser(specs).parse_args(_inner(_command(QWEN3_8B, "stage1", "Qwen/Qwen3-8B-Base", n_prompts=len(ids)))))
    assert ns["train.num_episodes"] == 1 and _openrlhf_steps(ns) == (p.train.stage1.max_steps, 335, False)


def test_export_repeats_fewer_questions_evenly(tmp_path):
    small = {"train.rollout_batch_size": 4, "train.global_batch_size": 4, "train.stage1": {"max_steps": 3}}
    report, ids = _export(tmp_path, 5, small)
    assert report == {"exported": 12, "questions": 5, "dropped_long_prompts": None, "passes": 2.4, "lengths_checked": False}
    assert sorted(ids.count(f"q{i}") for i in range(5)) == [2, 2, 2, 3, 3]


def test_export_subsamples_more_questions_without_repeats(tmp_path):
    _, ids = _export(tmp_path, 50, {"train.rollout_batch_size": 4, "train.global_batch_size": 4, "train.stage1": {"max_steps": 3}})
    assert len(ids) == len(set(ids)) == 12


def test_export_drops_prompts_longer_than_max_prompt_length(tmp_path, tiny_model_dir):
    from medssr.models import load_tokenizer
    from medssr.rl.data import RLExample, prompt_token_ids

    tok = load_tokenizer(str(tiny_model_dir))
    p = _params({"train.rollout_batch_size": 4, "train.global_batch_size": 4, "train.stage1": {"max_steps": 1}})
    examples = [RLExample(id=f"q{i}", kind="real", question="Q? " + "word " * (10 * i) + "\nA. a\nB. b", options={"A": "a", "B": "b"},
                          label="A") for i in range(6)]
    limit = len(prompt_token_ids(examples[2], "{question}", tok))
    p.train.max_prompt_length = limit
    report = orl.export_prompts(examples, "{question}", tmp_path / "s.jsonl", p.train, p.train.stage1, tokenizer=tok)
    assert report["dropped_long_prompts"] == 3 and report["questions"] == 3 and report["exported"] == 4
    ids = {json.loads(line)["id"] for line in (tmp_path / "s.jsonl").read_text().splitlines()}
    assert ids == {"q0", "q1", "q2"}


def test_a_prompt_file_of_the_wrong_size_is_a_config_error():
    with pytest.raises(ConfigError, match=r"holds 42000 prompts, not max_steps x train.rollout_batch_size = 42880"):
        _command(QWEN3_8B, "stage1", "Qwen/Qwen3-8B-Base", n_prompts=42000)


def test_a_rollout_must_hold_whole_updates():
    with pytest.raises(ConfigError, match="train.rollout_batch_size: 192 prompts per rollout must be a multiple"):
        _command({**QWEN3_8B, "train.rollout_batch_size": 192}, "stage1", "Qwen/Qwen3-8B-Base")


def test_adam_matches_the_papers_verl_trainer(specs):
    ns = vars(replica_parser(specs).parse_args(_inner(_command(QWEN3_8B, "stage1", "Qwen/Qwen3-8B-Base"))))
    assert ns["actor.adam.betas"] == [0.9, 0.999] and ns["actor.adam.weight_decay"] == 0.01


def test_runtime_env_sets_no_env_var_that_train_ppo_rays_ray_init_sets(wheel):
    ours = ray_init_env_keys(read_source(wheel))
    assert ours == set(orl.OPENRLHF_RAY_INIT_ENV_VARS)  # the list we keep out is the one in OpenRLHF's source
    env = json.loads((cmd := _command(QWEN3_8B, "stage1", "Qwen/Qwen3-8B-Base"))[cmd.index("--runtime-env-json") + 1])
    assert not set(env.get("env_vars", {})) & ours


def test_runtime_env_refuses_an_env_var_openrlhf_sets():
    with pytest.raises(ConfigError, match="TOKENIZERS_PARALLELISM"):
        orl.runtime_env(".", {"TOKENIZERS_PARALLELISM": "false"})
    assert orl.runtime_env(".", {"HF_HOME": "/shared/hf"})["env_vars"] == {"HF_HOME": "/shared/hf"}


def _shipped(root: Path) -> list[Path]:
    """Files Ray would upload from ``root`` with our excludes (gitignore-style patterns, as Ray matches them)."""
    import warnings

    import pathspec

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Ray 2.55 still uses the "gitwildmatch" factory
        spec = pathspec.PathSpec.from_lines("gitwildmatch", orl.RUNTIME_EXCLUDES)
    out: list[Path] = []

    def walk(d: Path) -> None:  # like Ray's _dir_travel: an excluded directory is not entered
        for p in d.iterdir():
            rel = p.relative_to(root)
            if spec.match_file(str(rel)):
                continue
            if p.is_dir():
                walk(p)
            elif p.is_file():
                out.append(rel)

    walk(root)
    return out


def test_runtime_env_ships_code_and_prompts_not_data_or_artifacts(tmp_path):
    for rel in ("medssr/rl/openrlhf_reward.py", "data/rl/stage1.jsonl", "data/eval/medqa.jsonl", "mlartifacts/1/x.bin",
                ".cache/models/m.bin", ".venv-openrlhf/lib/x.py", "checkpoints/stage1/model.safetensors", "mlflow.db",
                "data/raw/medmcqa.jsonl", "artifacts/models/policy/w.bin", ".git/objects/ab", "medssr/__pycache__/a.pyc",
                "medssr/reports/r.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    assert sorted(map(str, _shipped(tmp_path))) == ["data/rl/stage1.jsonl", "medssr/reports/r.py", "medssr/rl/openrlhf_reward.py"]


def test_this_checkout_ships_well_under_rays_upload_limit():
    size = sum((ROOT / rel).stat().st_size for rel in _shipped(ROOT))
    assert size < 100 * 2**20, f"{size / 2**20:.0f} MiB would be uploaded (Ray refuses packages of 512 MiB and more)"


def test_tensorboard_tags_are_keys_openrlhf_writes(wheel):
    """TensorboardLogger writes each status key k as train/k: the key must be a literal in OpenRLHF's trainer
    sources, or one of our reward file's extra_logs (OpenRLHF logs those per sample)."""
    from tests.test_openrlhf_reward import load_reward_module

    keys = set()
    for module in ("openrlhf/trainer/ppo_trainer.py", "openrlhf/trainer/ray/ppo_actor.py"):
        keys |= string_constants(read_source(wheel, module))
    keys |= set(load_reward_module().reward_func(["q"], ["q"], ["A"])["extra_logs"])
    assert 'add_scalar(f"train/{k}"' in read_source(wheel, "openrlhf/utils/logging_utils.py")
    missing = [tag for tag in orl.TB_TAGS if not tag.startswith("train/") or tag[len("train/") :] not in keys]
    assert missing == []


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

    from medssr.data.loaders import load_medmcqa
    from medssr.records import write_jsonl
    from tests.conftest import RAW

    root = tmp_path / "proj"
    (root / "prompts").mkdir(parents=True)
    shutil.copy(ROOT / "prompts" / "eval_f4.txt", root / "prompts" / "eval_f4.txt")
    write_jsonl(root / "data/prepared/train.jsonl", load_medmcqa(RAW)[:6])
    write_jsonl(root / "data/prepared/benchmarks/medmcqa.jsonl", load_medmcqa(RAW)[6:12])  # the held-out set (--eval.dataset)
    shutil.copytree(tiny_model_dir, root / "artifacts/models/policy")
    install_fake_openrlhf(tmp_path / "fake_openrlhf", FAKE_TRAIN_PPO_RAY, root, monkeypatch)
    return root


def install_fake_openrlhf(fake: Path, script: str, root: Path, monkeypatch) -> None:
    """A stand-in ``openrlhf.cli.train_ppo_ray`` module (``script``) on PYTHONPATH, run by this interpreter for ``root``."""
    import sys

    (fake / "openrlhf" / "cli").mkdir(parents=True)
    (fake / "openrlhf" / "__init__.py").write_text("")
    (fake / "openrlhf" / "cli" / "__init__.py").write_text("")
    (fake / "openrlhf" / "cli" / "train_ppo_ray.py").write_text(script)
    monkeypatch.setenv("PYTHONPATH", str(fake))
    monkeypatch.setenv("MEDSSR_OPENRLHF_PYTHON", sys.executable)
    monkeypatch.setenv("MEDSSR_ROOT", str(root))


def _train_paths(stage: str):
    """The stage's StagePaths as its dvc.yaml cmd passes them (tests/test_trl_backend.py)."""
    from tests.test_trl_backend import _paths

    return _paths(stage)


def _orl_params():
    return _params({"train.backend": "openrlhf", "train.strategy": "supervised", "train.global_batch_size": 2,
                    "train.rollout_batch_size": 2, "train.micro_batch_size": 1, "train.num_generations": 2,
                    "train.stage2": {"max_steps": 2, "learning_rate": 1e-6, "beta": 0.0, "max_samples": None},
                    "train.openrlhf": {"ray_address": "", "gpus_per_node": 1, "vllm_num_engines": 1}})


def test_openrlhf_stage_runs_the_command_and_bridges_its_tensorboard_to_mlflow(orl_project):
    from mlflow.tracking import MlflowClient

    from medssr.rl.run import run_train_stage

    run_train_stage(_orl_params(), "stage1", _train_paths("stage1"))  # supervised: stage1 is a pass-through
    report = run_train_stage(_orl_params(), "stage2", _train_paths("stage2"))
    assert report["global_step"] == 2 and report["summary"]["reward_mean_last"] == 0.5
    assert (orl_project / "checkpoints/stage2/config.json").exists()
    assert "trained on 4 prompts" in (orl_project / ".cache/train/stage2/openrlhf.log").read_text()
    client = MlflowClient()
    run = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.medssr_stage = 'stage2'",
                             order_by=["attributes.start_time DESC"])[0]
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/stage2/reward_mean")] == [(1, 0.25), (2, 0.5)]
    assert client.get_metric_history(run.info.run_id, "train/stage2/valid_answer_share")[0].value == 0.5


def test_a_failed_openrlhf_run_names_its_log(orl_project, monkeypatch):
    from medssr.rl.run import TrainError, run_train_stage

    monkeypatch.setenv("FAKE_OPENRLHF_FAIL", "1")
    run_train_stage(_orl_params(), "stage1", _train_paths("stage1"))
    with pytest.raises(TrainError, match=r"\.cache/train/stage2/openrlhf\.log: OpenRLHF exited with status 3"):
        run_train_stage(_orl_params(), "stage2", _train_paths("stage2"))


@pytest.mark.parametrize("profile", ["paper-qwen3-8b", "paper-llama3.1-8b"])
@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_paper_profile_commands_parse_and_train_max_steps_in_one_episode(tmp_path, specs, profile, stage):
    import shutil

    from medssr.profiles import apply_profile

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    apply_profile(profile, tmp_path / "params.yaml")
    p = load_params(tmp_path / "params.yaml")
    stage_cfg = getattr(p.train, stage)
    cmd = orl.build_command(p.train, stage_cfg, _paths(stage, p.model.policy), n_prompts=orl.stage_prompt_count(p.train, stage_cfg),
                            run_name=f"medssr-{stage}", working_dir=SHARED)
    ns = vars(replica_parser(specs).parse_args(_inner(cmd)))
    updates = stage_cfg.max_steps * p.train.rollout_batch_size // p.train.global_batch_size
    assert _openrlhf_steps(ns) == (stage_cfg.max_steps, updates, False)
    assert "env_vars" not in json.loads(cmd[cmd.index("--runtime-env-json") + 1])


def test_heldout_eval_and_plain_prompt_flags_parse_with_train_ppo_ray_argparse(specs):
    """train.eval_every on OpenRLHF: --eval.dataset/steps/n_samples_per_prompt/temperature; a base model drops
    --data.apply_chat_template (issue 22.1/22.8)."""
    import dataclasses

    p = _params(QWEN3_8B)
    paths = dataclasses.replace(_paths("stage1", "Qwen/Qwen3-8B-Base"), heldout_dataset="data/rl/stage1_heldout.jsonl")
    flags = orl.train_flags(p.train, p.train.stage1, paths, n_prompts=orl.stage_prompt_count(p.train, p.train.stage1),
                            run_name="x", chat_template=False)
    assert "--data.apply_chat_template" not in flags
    assert flags[flags.index("--eval.dataset") + 1] == "data/rl/stage1_heldout.jsonl"
    assert flags[flags.index("--eval.steps") + 1] == str(p.train.eval_every)
    emitted = {t for t in flags if t.startswith("--")}
    assert emitted <= defined_flags(specs), f"undefined: {sorted(emitted - defined_flags(specs))}"
    ns, unknown = replica_parser(specs).parse_known_args(flags)
    assert unknown == [] and getattr(ns, "eval.n_samples_per_prompt") == 1


def test_openrlhfs_heldout_eval_scalar_becomes_heldout_acc():
    rows = orl.tensorboard_history({orl.HELDOUT_TAG: {4: 0.375}, "train/kl": {4: 0.01}})
    assert rows == [{"step": 4, "heldout_acc": 0.375, "kl": 0.01}] or rows[0]["heldout_acc"] == 0.375
