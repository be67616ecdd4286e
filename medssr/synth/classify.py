"""LLM classifiers for the prepare stage: the reasoning filter (prompt F.3) and the RareDis-Sub category.

Both use the synthesis generator backends (with their cache and ledger) and parse strictly: a reply that
does not give exactly one allowed label is ``None`` (unknown), never a guess. The lead wires them in with
``data.reasoning_filter: llm`` and ``data.category_classifier: llm``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

from medssr.records import CATEGORIES, Question
from medssr.synth.prompts import PROMPT_NAMES, load_prompt

_TAG = re.compile(r"<\s*(reasoning|memorization)\s*>", re.I)
_CATEGORY_LINE = re.compile(r"^\s*(?:\*\*)?category\s*(?:\*\*)?\s*:\s*(?:\*\*)?\s*(.+?)\s*$", re.I | re.M)
_CATEGORY_BY_KEY = {c.lower(): c for c in CATEGORIES}


def parse_reasoning_label(text: str) -> bool | None:
    """True for <Reasoning>, False for <Memorization>; None when neither or both tags appear."""
    labels = {m.lower() for m in _TAG.findall(text or "")}
    if len(labels) != 1:
        return None
    return labels.pop() == "reasoning"


def parse_category(text: str) -> str | None:
    """The category of a 'Category: X' line (or of a reply that is just X); None if absent, unknown or ambiguous."""
    t = (text or "").strip()
    found = _CATEGORY_LINE.findall(t)
    if not found:
        lines = [line for line in t.split("\n") if line.strip()]
        if len(lines) != 1:
            return None
        found = lines
    names = {_CATEGORY_BY_KEY.get(_clean(v)) for v in found}
    if len(names) != 1 or None in names:
        return None
    return names.pop()


def _clean(value: str) -> str:
    v = value.strip().strip("*`\"'<>[]().").strip()
    return " ".join(v.lower().split())


def _requests(questions: Sequence[Question], prompt_key: str, prompt_dir: str | os.PathLike | None) -> list[Any]:
    from medssr.llm import LLMRequest

    prompt = load_prompt(PROMPT_NAMES[prompt_key], prompt_dir)
    return [LLMRequest(messages=(("user", prompt.render(question=q.render())),), schema_name=prompt_key) for q in questions]


def classify_reasoning(questions: Sequence[Question], generator: Any, prompt_dir: str | os.PathLike | None = None,
                       progress: bool = True) -> list[bool | None]:
    """Prompt F.3 per question: True = reasoning-heavy (keep as a seed), False = memorization, None = no valid reply."""
    responses = generator.run(_requests(questions, "F3", prompt_dir), progress=progress)
    return [None if r.error is not None else parse_reasoning_label(r.text) for r in responses]


def classify_category(questions: Sequence[Question], generator: Any, prompt_dir: str | os.PathLike | None = None,
                      progress: bool = True) -> list[str | None]:
    """One of records.CATEGORIES per question, or None when the reply names none (or several)."""
    responses = generator.run(_requests(questions, "category", prompt_dir), progress=progress)
    return [None if r.error is not None else parse_category(r.text) for r in responses]


class BatchedLLMClassifier:
    """Adapter for the prepare stage: ``classify_many`` sends one concurrent batch; replies that parse to
    nothing fall back to the transparent rule (heuristic reasoning filter / keyword categories), counted."""

    def __init__(self, classify: Any, generator: Any, fallback: Any, prompt_dir: str | os.PathLike | None = None):
        self.classify, self.generator, self.fallback, self.prompt_dir = classify, generator, fallback, prompt_dir
        self.fallbacks = 0

    def classify_many(self, questions: Sequence[Question]) -> list[Any]:
        labels = self.classify(list(questions), self.generator, self.prompt_dir)
        out = []
        for q, label in zip(questions, labels, strict=True):
            if label is None:
                self.fallbacks += 1
                label = self.fallback(q)
            out.append(label)
        return out

    def __call__(self, q: Question) -> Any:
        return self.classify_many([q])[0]
