"""The embedded GRPO trainer: TRL ``GRPOTrainer`` (trl 1.16) on CPU or one GPU, configured from params.

Batch semantics follow TRL: ``train.per_device_batch_size`` counts *completions* per device and micro-step, so
a step sees ``per_device_batch_size * gradient_accumulation_steps / num_generations`` prompts. The reference
model (``beta > 0``) is reloaded by TRL from the model path, so the policy is always passed as a directory.
Checkpoints (``save_steps``) go to a run dir outside the DVC out; the finished policy is written with
``save_pretrained`` (model + tokenizer) so transformers and vLLM load it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medssr.config import ConfigError, StageTrainCfg, TrainCfg, set_offline_env
from medssr.rl.callbacks import OWN_PREFIX, MLflowStepCallback, group_metrics, peak_memory_mb, summarize


def grpo_config(train: TrainCfg, stage_cfg: StageTrainCfg, output_dir: str | os.PathLike, *, use_cpu: bool | None = None,
                dtype: str = "float32"):
    """The GRPOConfig of one stage: sampling, batch, KL, lr, checkpointing; logging only through our callback."""
    set_offline_env()
    import torch
    from trl import GRPOConfig

    if use_cpu is None:
        use_cpu = not torch.cuda.is_available()
    bf16 = (not use_cpu) and torch.cuda.is_bf16_supported()
    return GRPOConfig(
        output_dir=str(output_dir),
        max_steps=stage_cfg.max_steps,
        learning_rate=stage_cfg.learning_rate,
        lr_scheduler_type="constant",  # verl's (the paper's trainer) default: no decay, no warmup
        warmup_steps=0,
        adam_beta1=train.adam_beta1,  # verl's AdamW: betas (0.9, 0.999), weight decay 0.01 (TRL's default decay is 0)
        adam_beta2=train.adam_beta2,
        weight_decay=train.weight_decay,
        beta=stage_cfg.beta,
        num_generations=train.num_generations,
        temperature=train.temperature,
        top_p=train.top_p,
        max_completion_length=train.max_completion_length,
        per_device_train_batch_size=train.per_device_batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        loss_type=train.loss_type,
        scale_rewards=scale_rewards(train.loss_type),
        seed=train.seed,
        data_seed=train.seed,
        use_cpu=use_cpu,
        bf16=bf16,
        fp16=False,
        gradient_checkpointing=not use_cpu,  # saves GPU memory; on CPU it only costs time
        model_init_kwargs={"dtype": dtype},
        logging_steps=1,
        report_to="none",
        save_strategy="steps",
        save_steps=train.save_steps,
        save_total_limit=1,
        save_only_model=False,  # optimizer + RNG state: needed to resume after a kill
        log_completions=False,
        dataloader_num_workers=0,
    )


def scale_rewards(loss_type: str) -> str:
    """TRL's advantage scaling for a loss: Dr. GRPO does not divide by the group's reward std (its paper, §3.1), which
    TRL 1.16 still does by default ('group') even with loss_type='dr_grpo'; every other loss keeps GRPO's std scaling."""
    return "none" if loss_type == "dr_grpo" else "group"


def _options(o: Any) -> dict[str, str]:
    return json.loads(o) if isinstance(o, str) else dict(o)


def make_reward_fn(kind: str, num_generations: int, stop_token_ids: Sequence[int] | None = None):
    """The TRL reward callable of a stage ('majority' | 'gold' | 'online_vote') that also logs the collapse signals.

    'majority' and 'gold' are the same indicator reward against the row's ``label`` column (offline vote or gold
    answer); 'online_vote' votes within each group of ``num_generations`` rollouts of a question at every step. For
    online voting the reward's own target is the group's current majority, so ``pseudo_label_agreement`` is measured
    against it and ``offline_label_agreement`` against the offline vote, for comparison. ``stop_token_ids`` (the
    callable's ``stop_token_ids`` attribute, which ``build_trainer`` sets from the trainer) tells a finished
    completion from a cut-off one (``rewards.trl_finished``).
    """
    from medssr.rl import rewards

    if kind not in ("majority", "gold", "online_vote"):
        raise ConfigError(f"reward: expected majority, gold or online_vote, got {kind!r}")

    def reward(prompts, completions, label=None, options=None, completion_ids=None, log_metric=None, **kwargs) -> list[float]:
        # the reward functions get no log_metric: the collapse signals are logged once, here, under our names
        read = {"completion_ids": completion_ids, "stop_token_ids": reward.stop_token_ids, "num_generations": num_generations}
        if kind == "online_vote":
            scores = rewards.online_vote_reward(prompts, completions, options=options, **read, **kwargs)
        else:
            scores = rewards.trl_reward(prompts, completions, label=label, options=options, **read, **kwargs)
        if log_metric is not None:
            # the answers and targets the rewards used: same reader and finished flags, same groups, vote and tie rule
            finished = rewards.trl_finished(completion_ids, reward.stop_token_ids, len(completions))
            answers = [rewards.response_answer(rewards.completion_text(c), _options(o), f)
                       for c, o, f in zip(completions, options, finished, strict=True)]
            targets = (rewards.vote_targets(prompts, answers, kwargs.get("id"), num_generations=num_generations)
                       if kind == "online_vote" else list(label))
            m = group_metrics(answers, num_generations, targets if kind != "gold" else None)
            if kind == "online_vote" and label is not None:
                m["offline_label_agreement"] = sum(a is not None and a == t for a, t in zip(answers, label, strict=True)) / len(answers)
            if kind == "gold":
                m["accuracy"] = sum(a is not None and a == t for a, t in zip(answers, label, strict=True)) / len(answers)
            if completion_ids is not None:
                m["completion_tokens"] = float(sum(len(ids) for ids in completion_ids))
            for k, v in m.items():
                log_metric(OWN_PREFIX + k, v)
        return scores

    reward.__name__ = f"medssr_{kind}"
    reward.stop_token_ids = list(stop_token_ids) if stop_token_ids is not None else None
    return reward


def _trainer_class():
    """GRPOTrainer that also times generation, so a step splits into generation vs policy update, and logs peak memory;
    with ``rollouts`` set (``attach_rollouts``) its completions come from medssr's sampler instead of ``generate``;
    with ``grouped_logps`` (default) the policy's and reference's log-probs run each prompt once per group
    (``medssr.rl.grouped_logps``) wherever that is exact, else TRL's own method.

    Timing and memory go into the step's log, hence into ``log_history`` and every checkpoint's
    ``trainer_state.json``: a resumed run restores them with the rest of the history.
    """
    import torch
    from trl import GRPOTrainer

    class TimedGRPOTrainer(GRPOTrainer):
        rollouts = None  # medssr.rl.rollouts.PolicyRollouts, or None for TRL's own generation
        grouped_logps = True  # False: TRL's one-forward-per-row log-probs (the bench's baseline)

        def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                               compute_entropy=False, compute_aux_loss=False, **multimodal):
            from medssr.rl import grouped_logps

            if (self.grouped_logps and not compute_aux_loss and all(v is None for v in multimodal.values())
                    and not getattr(self.args, "padding_free", False)
                    and grouped_logps.unsupported(model, grad=torch.is_grad_enabled()) is None
                    and grouped_logps.worth_grouping(input_ids, attention_mask, logits_to_keep)):
                with self.accelerator.autocast():
                    logps, entropies = grouped_logps.per_token_logps_and_entropies(
                        model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size, compute_entropy=compute_entropy)
                return logps, entropies, None
            return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep, batch_size,
                                                              compute_entropy, compute_aux_loss, **multimodal)

        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
            if self.rollouts is None or images is not None or multimodal_fields:
                return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations, has_tool_images)
            ids = self.rollouts(prompt_ids, num_generations, step=self.state.global_step, process=self.accelerator.process_index)
            return ids, None  # no sampling log-probs: TRL computes the old ones itself when it needs them

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if "train_runtime" not in logs:  # a step, not the end-of-training summary
                logs = {**logs, **{OWN_PREFIX + k: v for k, v in peak_memory_mb().items()}}
            super().log(logs, start_time)

        def _generate(self, prompts: list):
            t0 = time.perf_counter()
            out = super()._generate(prompts)
            mode = "train" if self.model.training else "eval"
            self._metrics[mode][OWN_PREFIX + "generation_s"].append(time.perf_counter() - t0)
            return out

    return TimedGRPOTrainer


def attach_rollouts(trainer: Any, requested: str, model_dir: str | os.PathLike) -> str:
    """Decide ``train.rollout_sampler`` for this trainer ('hf' or 'trl') and, for 'hf', route its rollouts through
    ``PolicyRollouts`` bound to the very module it trains (see ``medssr.rl.rollouts``)."""
    from medssr.rl.rollouts import PolicyRollouts, choose_rollout_sampler, unsupported_generation_settings

    args = trainer.args
    model = trainer.accelerator.unwrap_model(trainer.model)
    rollouts = PolicyRollouts(model, trainer.processing_class, str(model_dir), seed=args.seed, temperature=args.temperature,
                              top_p=args.top_p, top_k=args.top_k, max_new_tokens=args.max_completion_length)
    unsupported = unsupported_generation_settings(args)
    if getattr(trainer, "tools", None):
        unsupported.append("tools")
    if getattr(trainer, "_is_vlm", False):
        unsupported.append("a vision-language model")
    on_cpu = next(model.parameters()).device.type == "cpu"
    choice = choose_rollout_sampler(requested, on_cpu=on_cpu, fast_path=rollouts.fast_path, unsupported=unsupported)
    trainer.rollouts = rollouts if choice == "hf" else None
    return choice


def _no_final_save_callback():
    """Transformers saves a checkpoint at the last step whatever save_steps says; skip it (the policy is saved next)."""
    from transformers import TrainerCallback

    class NoFinalSave(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps and state.global_step % args.save_steps:
                control.should_save = False

    return NoFinalSave()


def complete_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """``checkpoint-N`` dirs that finished saving (trainer_state.json is written last), oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for p in run_dir.glob("checkpoint-*"):
        tail = p.name.split("-", 1)[1]
        if p.is_dir() and tail.isdigit() and (p / "trainer_state.json").exists():
            found.append((int(tail), p))
    return [p for _, p in sorted(found)]


def last_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    ckpts = complete_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def save_policy(model: Any, tokenizer: Any, out_dir: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """``save_pretrained`` model + tokenizer into ``out_dir`` atomically (``medssr.files.atomic_dir``)."""
    from medssr.files import atomic_dir

    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if meta is not None:
            (tmp / "medssr_source.json").write_text(json.dumps(meta, indent=2, default=str))
    return Path(out_dir)


def train(model_dir: str | os.PathLike, dataset: Any, reward_kind: str, train_cfg: TrainCfg, stage_cfg: StageTrainCfg, *, stage: str,
          run_dir: str | os.PathLike, out_dir: str | os.PathLike, mlflow: Any | None = None, dtype: str = "float32",
          resume_from: str | os.PathLike | None = None, callbacks: Sequence[Any] = (), meta: dict[str, Any] | None = None,
          rollout_sampler: str | None = None, grouped_logps: bool = True, heldout: Any = None) -> dict[str, Any]:
    """Run GRPO on ``dataset`` from ``model_dir``; save the policy to ``out_dir``; return history and summary.

    ``rollout_sampler`` ('auto' | 'hf' | 'trl'; default ``train.rollout_sampler``, 'auto' while params lack it) picks
    who samples the rollouts: medssr's sampler or TRL's ``generate`` (same prompts, settings, rewards and metrics).
    ``grouped_logps=False`` scores every rollout with its own prompt forward, as TRL does (the bench's baseline).
    ``heldout`` (a ``medssr.rl.heldout.HeldoutCallback``) measures held-out accuracy (its points: ``heldout``).
    """
    set_offline_env()
    step_cb = MLflowStepCallback(stage, mlflow)
    if heldout is not None:
        heldout.mlflow = mlflow
    trainer = build_trainer(model_dir, dataset, reward_kind, train_cfg, stage_cfg, run_dir=run_dir, dtype=dtype,
                            callbacks=[step_cb, _no_final_save_callback(), *([heldout] if heldout is not None else []), *callbacks])
    trainer.grouped_logps = grouped_logps
    requested = rollout_sampler or getattr(train_cfg, "rollout_sampler", "auto")
    rollouts = attach_rollouts(trainer, requested, model_dir)
    if mlflow is not None:
        mlflow.set_tag("rollout_sampler", rollouts)
    t0 = time.time()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    train_s = time.time() - t0
    policy = trainer.accelerator.unwrap_model(trainer.model)
    save_policy(policy, trainer.processing_class, out_dir, {**(meta or {}), "global_step": trainer.state.global_step})
    for ckpt in complete_checkpoints(run_dir):  # the run is done and saved: free the optimizer states
        shutil.rmtree(ckpt, ignore_errors=True)
    summary = summarize(step_cb.history)
    if heldout is not None and heldout.rows:  # first and last point: did the policy learn or collapse
        summary.update(heldout_acc_first=heldout.rows[0]["heldout_acc"], heldout_acc_last=heldout.rows[-1]["heldout_acc"])
    return {"history": step_cb.history, "summary": summary, "final": step_cb.final, "heldout": heldout.rows if heldout else [],
            "global_step": int(trainer.state.global_step), "train_s": train_s, "rollout_sampler": rollouts,
            "resumed_from": Path(resume_from).name if resume_from else None}


def build_trainer(model_dir: str | os.PathLike, dataset: Any, reward_kind: str, train_cfg: TrainCfg, stage_cfg: StageTrainCfg, *,
                  run_dir: str | os.PathLike, dtype: str = "float32", callbacks: Sequence[Any] = (),
                  reward_funcs: Sequence[Any] | None = None) -> Any:
    """The stage's GRPOTrainer (policy loaded from ``model_dir``), rollouts still TRL's until ``attach_rollouts``.

    ``reward_funcs`` replaces the stage's reward (``reward_kind``) with plain TRL reward callables."""
    from medssr.models import load_tokenizer

    config = grpo_config(train_cfg, stage_cfg, run_dir, dtype=dtype)
    tokenizer = load_tokenizer(str(model_dir))
    rewards = list(reward_funcs) if reward_funcs is not None else [make_reward_fn(reward_kind, train_cfg.num_generations)]
    trainer = _trainer_class()(model=str(model_dir), reward_funcs=rewards,
                               args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=list(callbacks))
    for fn in rewards:  # the ids that end a completion, exactly as TRL counts one as not truncated (rewards.trl_finished)
        if hasattr(fn, "stop_token_ids"):
            fn.stop_token_ids = [*trainer.eos_token_ids, trainer.processing_class.pad_token_id]
    return trainer
