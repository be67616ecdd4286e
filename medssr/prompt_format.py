"""The one prompt rule: how a question reaches the policy, identical in voting, both trainers and evaluation.

The paper votes "with the same configurations as training" (App. C.2) and evaluates base models on the plain F.4
text. So every path asks the same way: F.4 filled with the question (``question_message``), then the checkpoint's
chat-template decision (``prompt_format``: ``medssr.models.chat_template_rule`` keyed on its lineage), then the
same tokenisation (``token_ids``: a chat-templated text carries its own special tokens; a plain text gets the
tokenizer's own, as TRL and vLLM give a string). Each stage logs ``record``: the rule and the sha256 of a fixed
probe question rendered its way, so equal shas across label, stage1, stage2 and evaluate show one rule was used.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# A fixed question every stage renders the way it renders its own: the sha of the result names the stage's rule.
PROBE_QUESTION = ("A 34-year-old woman has progressive muscle weakness and ptosis that worsen during the day. "
                  "Which test confirms the diagnosis?\nA. Acetylcholine receptor antibodies\nB. Serum creatine kinase\n"
                  "C. Muscle biopsy\nD. Lumbar puncture")


def question_message(template: Any, question: str) -> str:
    """F.4 filled with the question (stem + option lines), stripped: the one user message of every path."""
    from medssr.synth.prompts import Prompt

    if isinstance(template, str):
        template = Prompt.from_text(template)
    return template.render(question=question).strip()


@dataclass(frozen=True)
class PromptFormat:
    """Whether a checkpoint's prompts go through its chat template, and why (the rule's own words)."""

    chat_template: bool
    rule: str

    def text(self, tok: Any, message: str) -> str:
        """The exact text the policy is given for one user message (the samplers' ``render`` is this too)."""
        from medssr.sampling import render_prompt

        return render_prompt(tok, message, self.chat_template)

    def token_ids(self, tok: Any, text: str) -> list[int]:
        """The prompt tokens of ``text`` (from ``text``): a templated text holds its special tokens already; a plain
        one gets the tokenizer's (a BOS for Llama-style tokenizers), as TRL tokenises a string prompt."""
        return list(tok(text, add_special_tokens=not self.chat_template)["input_ids"])

    def trl_prompt(self, message: str) -> Any:
        """The TRL dataset's ``prompt`` cell: chat messages (TRL applies the template) or the plain string (TRL
        tokenises it as is, with the tokenizer's special tokens)."""
        return [{"role": "user", "content": message}] if self.chat_template else message

    def openrlhf_prompt(self, tok: Any, message: str) -> Any:
        """The OpenRLHF JSONL ``prompt``: chat messages (with ``--data.apply_chat_template``) or plain text. OpenRLHF's
        agent tokenises the text without special tokens, so a plain prompt carries the BOS text its tokenizer would
        add (none for Qwen), and its token ids equal ``token_ids`` of the other paths."""
        if self.chat_template:
            return [{"role": "user", "content": message}]
        return (bos_text(tok) if tok is not None else "") + message  # no tokenizer: a dry run that cannot load it

    def record(self, render: Callable[[str], str] | None, template: Any, first_message: str | None = None) -> dict[str, Any]:
        """What a stage logs: the rule, and the sha256 of the probe (and of its own first prompt) as ``render`` (the
        stage's own path from message to text: a sampler's ``render``, or ``text`` with the trainer's tokenizer) gives it."""
        rec: dict[str, Any] = {"chat_template": self.chat_template, "rule": self.rule}
        if render is None:  # a dry run whose model is not on this machine
            rec["probe_sha256"] = "unknown (tokenizer not loaded)"
            return rec
        rec["probe_sha256"] = sha256(render(question_message(template, PROBE_QUESTION)))
        if first_message is not None:
            rec["first_prompt_sha256"] = sha256(render(first_message))
        return rec

    def renderer(self, tok: Any) -> Callable[[str], str] | None:
        """``text`` bound to a tokenizer (None without one, unless no template is needed)."""
        if tok is None and self.chat_template:
            return None
        return lambda message: self.text(tok, message)

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> PromptFormat:
        return cls(bool(d["chat_template"]), str(d["rule"]))


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def bos_text(tok: Any) -> str:
    """The BOS token's text when the tokenizer adds one to a plain string, else ''."""
    bos = getattr(tok, "bos_token_id", None)
    if bos is None:
        return ""
    ids = tok("x", add_special_tokens=True)["input_ids"]
    return str(tok.bos_token) if ids and ids[0] == bos else ""


def prompt_format(model_dir: str | os.PathLike, setting: str = "auto") -> PromptFormat:
    """The checkpoint's rule under params ``model.chat_template`` (``medssr.models.chat_template_rule``)."""
    from medssr.models import chat_template_rule

    use, why = chat_template_rule(model_dir, setting)
    return PromptFormat(use, why)


def mlflow_params(rec: dict[str, Any], prefix: str = "prompt") -> dict[str, Any]:
    """The record as stage-run params: ``prompt.chat_template``, ``prompt.rule``, ``prompt.probe_sha256``, ..."""
    return {f"{prefix}.{k}": v for k, v in rec.items()}


def summary(stage: str, rec: dict[str, Any]) -> str:
    """One line every stage prints: the rule and the probe's sha (equal across stages = one rule)."""
    first = f", first prompt {rec['first_prompt_sha256'][:12]}" if rec.get("first_prompt_sha256") else ""
    return (f"[{stage}] prompt: chat template {'yes' if rec['chat_template'] else 'no'} ({rec['rule']}); "
            f"probe sha256 {rec['probe_sha256'][:12]}{first}")


__all__ = ["PROBE_QUESTION", "PromptFormat", "bos_text", "mlflow_params", "prompt_format", "question_message", "sha256", "summary"]
