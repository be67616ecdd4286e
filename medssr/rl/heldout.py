"""Held-out accuracy during training (paper Fig. 6, performance panel): the curve that shows collapse or learning.

Every ``train.eval_every`` steps (and before the first) the live policy answers a small fixed, seeded set of real
benchmark questions greedily with prompt F.4 under the checkpoint's prompt rule (``medssr.prompt_format``), read as
evaluation reads an answer (a cut-off output is unfinished). The accuracy is logged as ``train/<stage>/heldout_acc``
(with ``heldout_n``) at its step and kept in the trainer's ``log_history``, so a resumed run keeps the points
already measured. The reward curve alone cannot show collapse: online voting earns reward for agreeing, not for
being right.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from transformers import TrainerCallback

from medssr.prompt_format import PromptFormat, question_message
from medssr.records import Question

HISTORY_KEY = "medssr_heldout_acc"  # its log_history entries: {"step", HISTORY_KEY, "medssr_heldout_n"}


def heldout_questions(benchmarks_dir: str | os.PathLike, n: int, seed: int) -> list[Question]:
    """The fixed set: ``n`` real questions with gold, drawn with ``seed`` across the prepared benchmarks."""
    from medssr.label.run import reliability_sample

    return reliability_sample(benchmarks_dir, n, seed)


def heldout_accuracy(sampler: Any, questions: Sequence[Question], template: Any, max_new_tokens: int) -> tuple[float, float]:
    """Greedy F.4 answers of ``sampler`` on ``questions``: (share equal to gold, share with a valid answer); no answer
    counts as wrong."""
    from medssr.answers import extract_answer

    prompts = [question_message(template, q.render()) for q in questions]
    outs = sampler.sample(prompts, 1, 0.0, max_new_tokens=max_new_tokens, options=[q.options for q in questions],
                          keys=[q.id for q in questions], progress=False, stop_at_answer=False)
    answers = [extract_answer(c[0].text, q.options, c[0].finish_reason != "length") for q, c in zip(questions, outs, strict=True)]
    if not answers:
        return 0.0, 0.0
    return (sum(a == q.answer for a, q in zip(answers, questions, strict=True)) / len(answers),
            sum(a is not None for a in answers) / len(answers))


def heldout_interval(acc: float, n: int) -> dict[str, float]:
    """The 95 % Wilson interval of a held-out accuracy over ``n`` questions (8 questions: wide, and it says so)."""
    from eval.stats import wilson_interval

    lo, hi = wilson_interval(round(acc * n), n)
    return {"heldout_acc_ci_low": lo, "heldout_acc_ci_high": hi}


class HeldoutCallback(TrainerCallback):
    """Measures held-out accuracy at step 0 and every ``every`` steps (and the last), logs it, keeps it in history."""

    def __init__(self, stage: str, questions: Sequence[Question], template: Any, fmt: PromptFormat, model_dir: str, *,
                 every: int, max_new_tokens: int, mlflow: Any | None = None):
        self.stage, self.questions, self.template, self.fmt = stage, list(questions), template, fmt
        self.model_dir, self.every, self.max_new_tokens, self.mlflow = model_dir, every, max_new_tokens, mlflow
        self.rows: list[dict[str, float]] = []

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        self.rows = [{"step": int(e["step"]), "heldout_acc": float(e[HISTORY_KEY]),
                      **heldout_interval(float(e[HISTORY_KEY]), int(e["medssr_heldout_n"])),
                      "heldout_valid_share": float(e["medssr_heldout_valid"]), "heldout_n": float(e["medssr_heldout_n"])}
                     for e in state.log_history if HISTORY_KEY in e]
        for r in self.rows:  # a resumed run's new MLflow run gets the points measured before the kill
            self._log(r)
        if state.global_step == 0 and not self.rows:
            self._measure(state, model, processing_class)

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self._measure(state, model, processing_class)

    def _measure(self, state, model, tok) -> None:
        from medssr.sampling import HFSampler

        if not self.questions or model is None:
            return
        was_training = model.training
        model.eval()
        try:  # a fresh sampler: its fast path fuses the weights of this step
            sampler = HFSampler(self.model_dir, batch_size=len(self.questions), model=model, tok=tok, chat_template=self.fmt.chat_template)
            acc, valid = heldout_accuracy(sampler, self.questions, self.template, self.max_new_tokens)
        finally:
            model.train(was_training)
        row = {"step": int(state.global_step), "heldout_acc": acc, **heldout_interval(acc, len(self.questions)),
               "heldout_valid_share": valid, "heldout_n": float(len(self.questions))}
        self.rows.append(row)
        state.log_history.append({"step": row["step"], HISTORY_KEY: acc, "medssr_heldout_valid": valid, "medssr_heldout_n": row["heldout_n"]})
        self._log(row)

    def _log(self, row: dict[str, float]) -> None:
        if self.mlflow is not None:
            from medssr.metric_names import train_metric

            self.mlflow.log_metrics({train_metric(self.stage, k): v for k, v in row.items() if k != "step"}, step=int(row["step"]))


__all__ = ["HISTORY_KEY", "HeldoutCallback", "heldout_accuracy", "heldout_questions"]
