"""The GPU-cluster GRPO trainer: OpenRLHF 0.11.2 ``train_ppo_ray`` (Ray + DeepSpeed + vLLM), launched from params.

This module never imports OpenRLHF (it does not import without a GPU, flash-attn and vLLM): it writes the
prompt/label JSONL, builds the ``ray job submit ... -- python3 -m openrlhf.cli.train_ppo_ray`` command with
OpenRLHF's dotted flags, runs it as a subprocess, and copies the TensorBoard scalars it writes into MLflow
(OpenRLHF has no MLflow logger). ``tests/test_openrlhf_command.py`` checks every emitted flag against the
argparse source of the 0.11.2 wheel; ``tests/test_openrlhf_engine.py`` runs OpenRLHF's own prompt dataset and
reward loader over our files and a real Ray job with our runtime_env, in the CPU environment ``.ci/openrlhf_env.sh``.

GPU environment (separate from the CPU venv: OpenRLHF pins transformers==5.15.0, the CPU stack uses 5.23):

    python3.11 -m venv .venv-openrlhf && . .venv-openrlhf/bin/activate
    pip install torch==2.13.0                       # the torch vllm 0.29.0 pins; install it first
    pip install "openrlhf[vllm]==0.11.2"            # transformers 5.15.0, deepspeed 0.19.6, ray[default] 2.55.0,
                                                    # vllm 0.29.0, flash-attn 2.8.3 (sdist: needs nvcc; if its build
                                                    # fails, `pip install --no-build-isolation flash-attn==2.8.3` first)
    pip install --no-deps -e . && pip install mlflow==3.17.2 pyyaml tqdm   # our launcher + MLflow bridge
    ray start --head --num-gpus 8                   # or point train.openrlhf.ray_address at a running cluster

Then ``dvc repro stage1`` (``train.backend: openrlhf``; the stage's cmd in dvc.yaml) submits the job and waits. Models,
checkpoints and TensorBoard logs are passed as absolute paths: on several nodes they must sit on a shared
filesystem. The dataset JSONL and the reward file travel with the Ray ``working_dir`` (the project root).
An empty ``train.openrlhf.ray_address`` runs ``python3 -m openrlhf.cli.train_ppo_ray`` directly (one node;
OpenRLHF starts Ray itself); ``MEDSSR_OPENRLHF_PYTHON=.venv-openrlhf/bin/python`` picks that environment's interpreter.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medssr.config import ConfigError, StageTrainCfg, TrainCfg
from medssr.prompt_format import PromptFormat
from medssr.rl.data import CHAT, RLExample, drop_long_prompts, fill_to, write_openrlhf_jsonl

ENTRYPOINT = "openrlhf.cli.train_ppo_ray"
REWARD_FILE = "medssr/rl/openrlhf_reward.py"
# Never uploaded to the Ray cluster with the working_dir (Ray's ``excludes``, gitignore syntax). ``launch`` turns off
# Ray's own .gitignore filtering (data/rl, a DVC out, must travel), so everything large or private is listed here:
# the job needs only medssr/ and data/rl/<stage>.jsonl.
RUNTIME_EXCLUDES = [".git", ".venv*", ".dvc/cache", ".dvc/tmp", ".cache", ".pytest_cache", ".ruff_cache", "__pycache__",
                    "*.egg-info", "*.whl", ".install-stamp*", "*.progress.jsonl", "/mlflow.db", "/mlruns", "/mlartifacts",
                    "/artifacts", "/checkpoints", "/data/raw", "/data/prepared", "/data/synthetic", "/data/labeled",
                    "/data/eval", "/logs", "/reports", "/metrics", "/plots"]
# Keys ``train_ppo_ray`` passes to its own ``ray.init(runtime_env={"env_vars": ...})`` (openrlhf 0.11.2,
# cli/train_ppo_ray.py): under ``ray job submit`` Ray refuses to merge a job runtime_env that sets any of them
# (ValueError at start-up), whatever the value. OpenRLHF already defaults them (TOKENIZERS_PARALLELISM=true).
OPENRLHF_RAY_INIT_ENV_VARS = ("TOKENIZERS_PARALLELISM", "NCCL_DEBUG", "RAY_ENABLE_ZERO_COPY_TORCH_TENSORS")

# train.loss_type (TRL's names) -> OpenRLHF (advantage estimator, loss aggregation); its keys are config.OPENRLHF_LOSS_TYPES
LOSS_MAP = {
    "grpo": ("group_norm", "seq-mean-token-mean"),  # per-sequence token mean, then mean (original GRPO)
    "dapo": ("group_norm", "token-mean"),
    "bnpo": ("group_norm", "token-mean"),
    "dr_grpo": ("dr_grpo", "token-mean"),  # OpenRLHF's Dr.GRPO is the advantage change (no std division)
}


@dataclass
class RunPaths:
    """Where one OpenRLHF stage reads and writes; see the module docstring for which must be absolute."""

    model: str  # --actor.model_name_or_path: HF dir (or hub id in paper profiles)
    dataset: str  # --data.prompt_dataset: JSONL from data.write_openrlhf_jsonl, relative to the working_dir
    output_dir: str  # --ckpt.output_dir: final HF weights (the stage's DVC out)
    ckpt_path: str  # --ckpt.path: DeepSpeed checkpoints, for --ckpt.load_enable resume
    tensorboard_dir: str  # --logger.tensorboard_dir
    reward_file: str = REWARD_FILE  # --reward.remote_url: a .py file OpenRLHF imports
    heldout_dataset: str | None = None  # --eval.dataset: the held-out questions of train.eval_every (datasource 'heldout')


def _num(x: float) -> str:
    """Floats as OpenRLHF users write them (2e-06 -> '2e-06', 1.0 -> '1.0')."""
    return repr(float(x))


def stage_prompt_count(train: TrainCfg, stage_cfg: StageTrainCfg) -> int:
    """Prompts the stage's export holds: ``max_steps`` full rollouts of ``train.rollout_batch_size`` in one episode.

    OpenRLHF has no max-steps flag: it runs ``--train.num_episodes`` passes over the prompt file, one global step per
    rollout batch, and ends a pass with a partial batch. An export of exactly this many prompts (questions repeated
    or subsampled, see ``data.fill_to``) with one episode gives exactly ``max_steps`` steps and no partial batch.
    """
    return stage_cfg.max_steps * train.rollout_batch_size


def export_prompts(examples: Sequence[RLExample], template: str, path: str | os.PathLike, train: TrainCfg,
                   stage_cfg: StageTrainCfg, tokenizer: Any | None, fmt: PromptFormat = CHAT) -> dict[str, Any]:
    """Write the stage's prompt JSONL: long prompts dropped (as on TRL), then exactly ``stage_prompt_count`` rows.

    Dropping here keeps OpenRLHF from left-truncating a prompt (it cuts the chat header and the instruction). With
    ``tokenizer=None`` (a dry run whose model cannot be loaded here) lengths are not checked: the report says so.
    """
    kept, dropped = (list(examples), None) if tokenizer is None else drop_long_prompts(examples, template, tokenizer,
                                                                                       train.max_prompt_length, fmt)
    if not kept:
        raise ConfigError(f"train.max_prompt_length: all {dropped} prompts are longer than {train.max_prompt_length} tokens")
    count = stage_prompt_count(train, stage_cfg)
    rows = fill_to(kept, count, seed=train.seed)
    write_openrlhf_jsonl(rows, template, path, fmt, tokenizer)
    return {"exported": len(rows), "questions": len(kept), "dropped_long_prompts": dropped,
            "passes": round(count / len(kept), 3), "lengths_checked": tokenizer is not None}


def check_openrlhf_params(train: TrainCfg, stage_cfg: StageTrainCfg, n_prompts: int) -> None:
    """The prompt file must hold exactly ``stage_prompt_count`` prompts (one episode of max_steps rollouts).

    The checks that depend on params alone (loss type, KL estimator, GPU layout, batch divisibility: the asserts
    train_ppo_ray and DeepSpeed would hit on the cluster) run when params are loaded: medssr.config.params_problems.
    """
    if n_prompts != stage_prompt_count(train, stage_cfg):
        raise ConfigError(f"train.<stage>.max_steps: the prompt file holds {n_prompts} prompts, not max_steps x "
                          f"train.rollout_batch_size = {stage_prompt_count(train, stage_cfg)}: write it with export_prompts")


def train_flags(train: TrainCfg, stage_cfg: StageTrainCfg, paths: RunPaths, *, n_prompts: int, run_name: str,
                chat_template: bool = True) -> list[str]:
    """The ``train_ppo_ray`` arguments of one stage (paper Table 8 settings come from params).

    Batch semantics (verl's, the paper's trainer): ``train.rollout_batch_size`` prompts per rollout ("global batch
    size"), ``train.global_batch_size`` prompts per optimizer update ("PPO mini batch size"; OpenRLHF's
    ``--train.batch_size`` counts samples, so it is multiplied by G), ``train.micro_batch_size`` samples per GPU.
    ``chat_template`` is the policy's ``PromptFormat``: without it (base models) the JSONL holds the plain text and
    OpenRLHF must not template it.
    """
    check_openrlhf_params(train, stage_cfg, n_prompts)
    o = train.openrlhf
    estimator, agg = LOSS_MAP[train.loss_type]
    f = [
        "--actor.model_name_or_path", paths.model,
        "--data.prompt_dataset", paths.dataset,
        "--data.input_key", "prompt",
        "--data.label_key", "label",
        *(["--data.apply_chat_template"] if chat_template else []),
        "--data.max_len", str(train.max_prompt_length + train.max_completion_length),
        "--data.max_samples", str(n_prompts),
        "--rollout.max_new_tokens", str(train.max_completion_length),
        "--rollout.n_samples_per_prompt", str(train.num_generations),
        "--rollout.batch_size", str(train.rollout_batch_size),
        "--rollout.micro_batch_size", str(train.micro_batch_size),
        "--rollout.temperature", _num(train.temperature),
        "--rollout.top_p", _num(train.top_p),
        "--train.batch_size", str(train.global_batch_size * train.num_generations),
        "--train.micro_batch_size", str(train.micro_batch_size),
        "--train.num_episodes", "1",
        "--train.max_epochs", "1",
        "--train.seed", str(train.seed),
        "--algo.advantage.estimator", estimator,
        "--actor.loss_agg_mode", agg,
        "--actor.adam.lr", _num(stage_cfg.learning_rate),
        "--actor.adam.betas", _num(train.adam_beta1), _num(train.adam_beta2),  # OpenRLHF's default is (0.9, 0.95)
        "--actor.adam.weight_decay", _num(train.weight_decay),  # OpenRLHF's default is 0.0
        "--actor.lr_scheduler", "constant",
        "--actor.lr_warmup_ratio", "0.0",
    ]
    if stage_cfg.beta > 0:  # Table 8 "KL loss enabled": KL as a loss term, k3 by default
        f += ["--algo.kl.init_coef", _num(stage_cfg.beta), "--algo.kl.use_loss", "--algo.kl.estimator", train.kl_estimator]
    else:  # coefficient 0: OpenRLHF creates no reference model at all
        f += ["--algo.kl.init_coef", "0.0"]
    f += [
        "--actor.num_nodes", str(o.num_nodes),
        "--actor.num_gpus_per_node", str(o.gpus_per_node),
    ]
    if stage_cfg.beta > 0:
        f += ["--ref.num_nodes", str(o.num_nodes), "--ref.num_gpus_per_node", str(o.gpus_per_node)]
    f += [
        "--vllm.num_engines", str(o.vllm_num_engines),
        "--vllm.tensor_parallel_size", str(o.vllm_tensor_parallel_size),
        "--vllm.gpu_memory_utilization", _num(o.vllm_gpu_memory_utilization),
    ]
    if o.colocate:
        f += ["--train.colocate_all", "--vllm.enable_sleep", "--ds.enable_sleep"]
    f += [
        "--ds.zero_stage", str(o.zero_stage),
        "--ds.param_dtype", "bf16",
        "--actor.gradient_checkpointing_enable",
        "--reward.remote_url", paths.reward_file,
        "--ckpt.output_dir", paths.output_dir,
        "--ckpt.path", paths.ckpt_path,
        "--ckpt.save_steps", str(train.save_steps),
        "--ckpt.max_num", "2",
        "--ckpt.load_enable",
        "--logger.logging_steps", "1",
        "--logger.tensorboard_dir", paths.tensorboard_dir,
        "--logger.wandb.run_name", run_name,
    ]
    if paths.heldout_dataset and train.eval_every:  # held-out accuracy: OpenRLHF's eval of the gold reward, greedy, once each
        f += ["--eval.dataset", paths.heldout_dataset, "--eval.steps", str(train.eval_every), "--eval.n_samples_per_prompt", "1",
              "--eval.temperature", "0.0"]
    return f + list(o.extra_args)


def runtime_env(working_dir: str, env_vars: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Ray runtime env: ship the code (medssr, the reward file, the stage JSONL), not the data or the venv.

    ``env_vars`` may not set a key train_ppo_ray's own ray.init sets (Ray rejects the job at start-up).
    """
    env: dict[str, Any] = {"working_dir": working_dir, "excludes": list(RUNTIME_EXCLUDES)}
    clash = sorted(set(env_vars or {}) & set(OPENRLHF_RAY_INIT_ENV_VARS))
    if clash:
        raise ConfigError(f"runtime_env env_vars {clash}: train_ppo_ray's ray.init sets them itself and Ray refuses a job "
                          "runtime_env that sets them too; leave them out (OpenRLHF reads them from the driver's environment)")
    if env_vars:
        env["env_vars"] = dict(env_vars)
    return env


def build_command(train: TrainCfg, stage_cfg: StageTrainCfg, paths: RunPaths, *, n_prompts: int, run_name: str,
                  working_dir: str | None = None, python: str = "python3", chat_template: bool = True) -> list[str]:
    """The full argv: ``ray job submit ... -- python3 -m openrlhf.cli.train_ppo_ray <flags>`` (or the bare module
    when ``train.openrlhf.ray_address`` is empty)."""
    o = train.openrlhf
    inner = [python, "-m", ENTRYPOINT, *train_flags(train, stage_cfg, paths, n_prompts=n_prompts, run_name=run_name,
                                                         chat_template=chat_template)]
    if not o.ray_address:
        return inner
    wd = working_dir if working_dir is not None else o.working_dir
    return ["ray", "job", "submit", "--address", o.ray_address, "--runtime-env-json", json.dumps(runtime_env(wd), sort_keys=True),
            "--", *inner]


def format_command(cmd: Sequence[str]) -> str:
    """Shell form with one flag per line, for --dry-run and the README (pastes back into a shell unchanged)."""
    lines: list[list[str]] = [[]]
    for tok in cmd:
        if tok.startswith("--") and lines[-1]:
            lines.append([])
        lines[-1].append(shlex.quote(tok))
    return " \\\n    ".join(" ".join(line) for line in lines)


def launch(cmd: Sequence[str], log_path: str | os.PathLike, cwd: str | os.PathLike | None = None) -> int:
    """Run the command, teeing its output to ``log_path``; returns the exit code (the caller raises on failure)."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        try:
            # Ray skips .gitignore'd files when uploading the working_dir, and DVC gitignores its outs (data/rl may be one):
            # our RUNTIME_EXCLUDES decide what is shipped instead.
            env = {**os.environ, "RAY_RUNTIME_ENV_IGNORE_GITIGNORE": "1"}
            proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        except FileNotFoundError:
            raise ConfigError(f"train.backend: cannot run {cmd[0]!r}: install the OpenRLHF environment described in "
                              "medssr/rl/openrlhf_backend.py (the `ray` CLI must be on PATH)") from None
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        return proc.wait()


# OpenRLHF TensorBoard tag -> our stable name. 0.11.2's TensorboardLogger.log_train writes every status key as
# ``train/<key>``: the trainer's rollout/* and timing/* keys, the actor's policy_loss, actor_lr, actor_grad_norm, kl
# (only with --algo.kl.use_loss), and each experience info key, which includes reward_func's extra_logs.
# tests/test_openrlhf_command.py checks each key against the wheel's source.
TB_TAGS = {
    "train/rollout/reward_mean": "reward_mean",
    "train/rollout/reward_std": "reward_std",
    "train/kl": "kl",
    "train/policy_loss": "loss",
    "train/actor_lr": "learning_rate",
    "train/rollout/response_length_mean": "completion_length",
    "train/rollout/truncated_rate": "clipped_ratio",
    "train/actor_grad_norm": "grad_norm",
    "train/timing/generation": "generation_s",
    "train/timing/ppo_train": "update_s",
    "train/timing/step_total": "step_time_s",
    # per-sample extra_logs of medssr/rl/openrlhf_reward.py, averaged by OpenRLHF over the batch
    "train/valid_answer": "valid_answer_share",
    "train/response_found": "response_found_share",
}


# OpenRLHF's eval of --eval.dataset rows whose datasource is 'heldout' (ppo_trainer compute_eval_metrics: eval_<ds>_pass1)
HELDOUT_TAG = "eval/eval_heldout_pass1"


def read_tensorboard(tb_dir: str | os.PathLike) -> dict[str, dict[int, float]]:
    """All scalar series under ``tb_dir`` (every run subdir): tag -> {step: value}; a later value for a step wins
    (a resumed run rewrites the steps after its checkpoint)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    tb_dir = Path(tb_dir)
    dirs = sorted({p.parent for p in tb_dir.rglob("events.out.tfevents.*")})
    series: dict[str, dict[int, float]] = {}
    for d in dirs:
        acc = EventAccumulator(str(d), size_guidance={SCALARS: 0})
        acc.Reload()
        for tag in acc.Tags().get(SCALARS, []):
            for ev in acc.Scalars(tag):
                series.setdefault(tag, {})[int(ev.step)] = float(ev.value)
    return series


def tensorboard_history(series: Mapping[str, Mapping[int, float]], samples_per_step: int | None = None) -> list[dict[str, float]]:
    """Per-step rows in our names; unmapped ``train/`` scalars are kept as ``orl_<key>``, eval ones as ``eval_<key>``."""
    rows: dict[int, dict[str, float]] = {}
    for tag, points in series.items():
        if tag in TB_TAGS:
            name = TB_TAGS[tag]
        elif tag.startswith("train/"):
            name = "orl_" + tag[len("train/") :].replace("/", "_")
        elif tag == HELDOUT_TAG:
            name = "heldout_acc"
        elif tag.startswith("eval/"):
            name = "eval_" + tag[len("eval/") :].replace("/", "_")
        else:
            continue
        for step, value in points.items():
            if math.isfinite(value):
                rows.setdefault(step, {})[name] = value
    out = []
    for step in sorted(rows):
        r = rows[step]
        if samples_per_step and r.get("step_time_s") and "completion_length" in r:
            r["tokens_per_s"] = r["completion_length"] * samples_per_step / r["step_time_s"]
        out.append({"step": step, **r})
    return out


def tensorboard_to_mlflow(tb_dir: str | os.PathLike, stage: str, mlflow: Any | None, samples_per_step: int | None = None) -> list[dict[str, float]]:
    """Copy OpenRLHF's TensorBoard scalars into the active MLflow run as ``train/<stage>/<name>``; returns the rows."""
    from medssr.metric_names import train_metric

    history = tensorboard_history(read_tensorboard(tb_dir), samples_per_step)
    if mlflow is not None:
        for row in history:
            step = int(row["step"])
            mlflow.log_metrics({train_metric(stage, k): v for k, v in row.items() if k != "step"}, step=step)
    return history
