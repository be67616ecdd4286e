"""Per-step training metrics under stable MLflow names ``train/<stage>/<name>`` (medssr.metric_names), collapse signals included.

TRL logs its own keys (``reward``, ``kl``, ``completions/mean_length`` ...); the reward wrapper in
``trl_backend`` adds group statistics of the extracted answers through TRL's ``log_metric`` hook under
``medssr/<name>``. ``step_metrics`` maps both to our names; ``MLflowStepCallback`` logs them each step.
Every step's row is built from that step's entry of the trainer's ``log_history`` alone, so a run resumed from
``checkpoint-N`` rebuilds rows 1..N from the checkpoint's ``trainer_state.json`` exactly as they were logged.
The collapse signals (paper Fig. 6: online voting drives every rollout to the same answer):
``distinct_answers`` and ``answer_entropy`` (per group of G rollouts, averaged), ``all_agree_share`` (groups
whose G rollouts all give the same valid answer), ``valid_answer_share``, and ``pseudo_label_agreement``.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from transformers import TrainerCallback

from medssr.metric_names import check_names, train_metric

OWN_PREFIX = "medssr/"  # keys our reward wrapper logs through TRL's log_metric

# TRL 1.16 log key -> our stable name
TRL_KEYS = {
    "reward": "reward_mean",
    "reward_std": "reward_std",
    "kl": "kl",
    "loss": "loss",
    "learning_rate": "learning_rate",
    "completions/mean_length": "completion_length",
    "completions/clipped_ratio": "clipped_ratio",
    "entropy": "token_entropy",
    "grad_norm": "grad_norm",
    "frac_reward_zero_std": "zero_std_group_share",
    "step_time": "step_time_s",
}

GROUP_KEYS = ("distinct_answers", "answer_entropy", "all_agree_share", "valid_answer_share")
MEAN_KEYS = ("reward_mean", "step_time_s", "generation_s", "update_s", "tokens_per_s", *GROUP_KEYS, "pseudo_label_agreement",
             "offline_label_agreement", "accuracy", "kl")


def group_metrics(answers: Sequence[str | None], num_generations: int, targets: Sequence[str | None] | None = None) -> dict[str, float]:
    """Collapse signals of one generation batch: ``answers`` hold G consecutive rollouts per question (TRL's order),
    the groups ``medssr.rl.rewards.rollout_groups`` votes over (a question drawn twice is two groups of G).

    ``targets`` (one per rollout) is the label the reward compared against; ``pseudo_label_agreement`` is the share
    of rollouts whose answer equals it.
    """
    from medssr.rl.rewards import group_stats

    if num_generations < 1 or len(answers) % num_generations:
        raise ValueError(f"{len(answers)} answers do not split into groups of {num_generations}")
    groups = [list(answers[i : i + num_generations]) for i in range(0, len(answers), num_generations)]
    stats = [group_stats(g) for g in groups]
    n = len(stats)
    out = {
        "distinct_answers": sum(float(s["distinct"]) for s in stats) / n,
        "answer_entropy": sum(float(s["entropy"]) for s in stats) / n,
        "all_agree_share": sum(float(bool(s["all_agree"])) for s in stats) / n,
        "valid_answer_share": sum(float(s["valid_share"]) for s in stats) / n,
    }
    if targets is not None:
        out["pseudo_label_agreement"] = sum(a is not None and a == t for a, t in zip(answers, targets, strict=True)) / len(answers)
    return out


def step_metrics(logs: Mapping[str, Any]) -> dict[str, float]:
    """One TRL ``on_log`` dict -> our metric names (without the ``train/<stage>/`` prefix); non-numbers dropped."""
    out: dict[str, float] = {}
    for key, value in logs.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            continue
        if key in TRL_KEYS:
            out[TRL_KEYS[key]] = float(value)
        elif key.startswith(OWN_PREFIX):
            out[key[len(OWN_PREFIX) :]] = float(value)
    tokens = out.pop("completion_tokens", None)
    if tokens is not None and out.get("step_time_s"):
        out["tokens_per_s"] = tokens / out["step_time_s"]
    if "generation_s" in out and "step_time_s" in out:
        out["update_s"] = max(0.0, out["step_time_s"] - out["generation_s"])
    return out


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory of this process (and of the GPU when one is used), in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"peak_rss_mb": rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out



def history_row(step: int, logs: Mapping[str, Any]) -> dict[str, float]:
    """One step's row of ``reports/train_<stage>_steps.json``: the step and its metrics in name order."""
    return {"step": step, **dict(sorted(step_metrics(logs).items()))}


def restored_history(log_history: Sequence[Mapping[str, Any]]) -> list[dict[str, float]]:
    """The rows of the steps a checkpoint's ``log_history`` holds (what was logged up to that checkpoint)."""
    rows = [history_row(int(e["step"]), e) for e in log_history if "train_runtime" not in e and "step" in e]
    return [r for r in rows if len(r) > 1]


class MLflowStepCallback(TrainerCallback):
    """Logs each TRL log event to the active MLflow run (if any) and keeps the history for the stage report.

    On resume the stage opens a new MLflow run (the dead one is closed as KILLED): the restored steps are logged to
    it again under their own step numbers, so the run a researcher opens holds the whole curve, each step once.
    """

    def __init__(self, stage: str, mlflow: Any | None = None):
        self.stage = stage
        self.mlflow = mlflow
        self.history: list[dict[str, float]] = []
        self.final: dict[str, float] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        # the Trainer has already loaded the checkpoint's state when it resumes
        self.history = restored_history(state.log_history)
        if self.mlflow is not None and self.history:
            self._log_rows(self.history)
            self.mlflow.set_tag("restored_steps", str(len(self.history)))

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "train_runtime" in logs:  # the end-of-training summary, not a step
            self.final = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}
            return
        row = history_row(int(state.global_step), logs)
        if len(row) == 1:
            return
        self.history.append(row)
        if self.mlflow is not None:
            self.mlflow.log_metrics({train_metric(self.stage, k): v for k, v in row.items() if k != "step"}, step=row["step"])

    def _log_rows(self, rows: Sequence[Mapping[str, float]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(train_metric(self.stage, k), v, now, int(r["step"])) for r in rows for k, v in r.items() if k != "step"]
        check_names({m.key for m in metrics})
        run_id = self.mlflow.active_run().info.run_id
        client = self.mlflow.MlflowClient()
        for i in range(0, len(metrics), 1000):  # MLflow's limit per batch
            client.log_batch(run_id, metrics=metrics[i : i + 1000])


def summarize(history: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Stage summary: last value of every metric, plus means of reward, step time and the collapse signals."""
    if not history:
        return {}
    out: dict[str, float] = {"steps_logged": float(len(history)), "last_step": float(history[-1]["step"])}
    keys = sorted({k for h in history for k in h if k != "step"})
    for k in keys:
        vals = [h[k] for h in history if k in h]
        out[f"{k}_last"] = vals[-1]
        if k in MEAN_KEYS:
            out[f"{k}_mean"] = sum(vals) / len(vals)
        if k in ("peak_rss_mb", "peak_gpu_mb"):
            out[f"{k}_max"] = max(vals)
    return out
