"""GRPO training data: questions -> prompts + reward targets, for TRL (a ``datasets.Dataset``) and OpenRLHF (JSONL).

The prompt is the paper's evaluation prompt F.4 (``prompts/eval_f4.txt``, placeholder ``{question}``) filled by
``Prompt.render``, as the label stage and evaluation fill it, with the stem and its ``A. ...`` option lines, and
sent as one user chat message so that each backend applies the policy's chat template. The reward target is
``Question.label``: the offline majority vote for a labeled synthetic question (stage I), the gold answer for a
real one (stage II). Whether the message goes through the chat template is the checkpoint's ``PromptFormat``
(``medssr.prompt_format``), the one rule the label stage and evaluation apply too: a base model gets the plain text.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medssr.errors import MedssrError
from medssr.prompt_format import PromptFormat, question_message
from medssr.records import Question, read_questions
from medssr.synth.prompts import Prompt, PromptError, load_prompt

DEFAULT_PROMPT = "prompts/eval_f4.txt"
CHAT = PromptFormat(True, "always (caller)")  # the default of helpers that tests and benches call on instruct models


class RLDataError(MedssrError, ValueError):
    """Training data that cannot be used; the message names the file (and row id) and what to do."""


@dataclass
class RLExample:
    """One training prompt: the rendered question, its options and the letter the reward checks against."""

    id: str
    kind: str  # "synthetic" | "real"
    question: str  # stem + "A. ..." lines (Question.render())
    options: dict[str, str]
    label: str
    agreement: float | None = None  # vote share of the offline majority (synthetic only)


def load_train_prompt(path: str | os.PathLike = DEFAULT_PROMPT) -> Prompt:
    """The F.4 prompt file (placeholder ``{question}`` only); relative paths from the project root."""
    from medssr.tracking import workspace_root

    p = Path(path)
    if not p.is_absolute():
        p = workspace_root() / p
    try:
        prompt = load_prompt(p.stem, p.parent)
    except PromptError as e:
        raise RLDataError(str(e)) from None
    if prompt.placeholders != {"question"}:
        raise RLDataError(f"{p}: prompt template has placeholders {sorted(prompt.placeholders)}; a training prompt takes only {{question}}")
    return prompt


def load_prompt_template(path: str | os.PathLike = DEFAULT_PROMPT) -> str:
    """The F.4 prompt body as text (header comments stripped): what the stage's run fingerprint hashes."""
    return load_train_prompt(path).template


def render_prompt(question: str, prompt: Prompt | str) -> str:
    """Fill the F.4 prompt (a Prompt, or its body text) with ``Prompt.render``: one pass, braces in questions kept.

    The message is stripped (``medssr.prompt_format.question_message``, as the label stage and evaluation fill it)."""
    return question_message(prompt, question)


def chat_prompt(ex: RLExample, template: Prompt | str) -> list[dict[str, str]]:
    """The prompt as chat messages (one user turn)."""
    return [{"role": "user", "content": render_prompt(ex.question, template)}]


def examples_from_questions(questions: Iterable[Question], kind: str, source: str | os.PathLike = "<questions>") -> tuple[list[RLExample], int]:
    """Questions -> examples; rows without a reward target are skipped and counted, labels outside the options raise.

    A synthetic question needs its offline ``majority`` (a generator's own answer key is never the stage-I reward).
    """
    out: list[RLExample] = []
    skipped = 0
    for q in questions:
        label = q.majority if kind == "synthetic" else q.answer
        if label is None:
            skipped += 1
            continue
        if label not in q.options:
            field = "majority" if kind == "synthetic" else "answer"
            letters = list(q.options)
            raise RLDataError(f"{source}: id {q.id}: {field} {label!r} is not among options {letters[0]}-{letters[-1]}")
        out.append(RLExample(id=q.id, kind=kind, question=q.render(), options=dict(q.options), label=label,
                             agreement=q.agreement if kind == "synthetic" else None))
    return out, skipped


def _read(kind: str, path: str | os.PathLike) -> tuple[list[RLExample], int, int]:
    p = Path(path)
    if not p.exists():
        what = "labeled synthetic set (label stage)" if kind == "synthetic" else "real training set (prepare stage)"
        raise RLDataError(f"{p}: no such file: the {what} is missing")
    questions = read_questions(p)
    examples, skipped = examples_from_questions(questions, kind, p)
    if not examples:
        hint = ("no row has a majority vote: is this the output of the label stage?" if kind == "synthetic"
                else "no row has a gold answer")
        raise RLDataError(f"{p}: empty {kind} training set ({len(questions)} rows, {skipped} without a label): {hint}")
    return examples, len(questions), skipped


def load_examples(kind: str, synthetic_path: str | os.PathLike, real_path: str | os.PathLike, max_samples: int | None = None,
                  seed: int = 0) -> tuple[list[RLExample], dict[str, Any]]:
    """Examples for a stage's dataset kind ('synthetic', 'real' or 'mixed'), shuffled with ``seed`` and capped.

    'mixed' (Table 3 "One-stage") pools both sets before shuffling, so a cap keeps their proportion.
    """
    if kind not in ("synthetic", "real", "mixed"):
        raise RLDataError(f"dataset kind: expected synthetic, real or mixed, got {kind!r}")
    examples: list[RLExample] = []
    stats: dict[str, Any] = {}
    for k, path in (("synthetic", synthetic_path), ("real", real_path)):
        if kind in (k, "mixed"):
            ex, n_rows, skipped = _read(k, path)
            examples += ex
            stats[f"{k}_rows"] = n_rows
            stats[f"{k}_unlabeled"] = skipped
            stats[f"{k}_path"] = str(path)
    random.Random(seed).shuffle(examples)
    if max_samples is not None:
        examples = examples[:max_samples]
    stats["examples"] = len(examples)
    stats["by_kind"] = {k: sum(e.kind == k for e in examples) for k in ("synthetic", "real") if any(e.kind == k for e in examples)}
    return examples, stats


def prompt_token_ids(ex: RLExample, template: Prompt | str, tokenizer: Any, fmt: PromptFormat = CHAT) -> list[int]:
    """The prompt's tokens as the trainers see them (``PromptFormat.token_ids`` of its text).

    OpenRLHF 0.11.2 renders the text in PromptDataset and its agent tokenizes it without special tokens; TRL
    tokenises a templated chat the same way and a plain string with the tokenizer's own (``openrlhf_prompt`` puts
    that BOS into the text), so both see these ids.
    """
    return fmt.token_ids(tokenizer, fmt.text(tokenizer, render_prompt(ex.question, template)))


def drop_long_prompts(examples: Sequence[RLExample], template: Prompt | str, tokenizer: Any, max_tokens: int,
                      fmt: PromptFormat = CHAT) -> tuple[list[RLExample], int]:
    """Keep prompts whose length as the policy gets them fits ``train.max_prompt_length`` (no trainer may truncate them)."""
    kept, dropped = [], 0
    for ex in examples:
        if len(prompt_token_ids(ex, template, tokenizer, fmt)) <= max_tokens:
            kept.append(ex)
        else:
            dropped += 1
    return kept, dropped


def fill_to(examples: Sequence[RLExample], count: int, seed: int = 0) -> list[RLExample]:
    """Exactly ``count`` examples: a seeded subset when there are more, else seeded reshuffled passes over all of them.

    With fewer questions every one appears ``count // len`` or ``count // len + 1`` times.
    """
    if not examples:
        raise RLDataError("no training examples to fill the stage's prompt set from")
    if count < 1:
        raise RLDataError(f"prompt count must be >= 1, got {count}")
    rng = random.Random(seed)
    if count <= len(examples):
        return rng.sample(list(examples), count)
    out: list[RLExample] = []
    while len(out) < count:
        batch = list(examples)
        rng.shuffle(batch)
        out += batch[: count - len(out)]
    return out


def trl_rows(examples: Sequence[RLExample], template: Prompt | str, fmt: PromptFormat = CHAT) -> list[dict[str, Any]]:
    """Rows for TRL: ``prompt`` (chat messages or, for a base model, the plain text), ``label``, ``options`` (JSON
    text: option sets differ, Arrow wants one schema)."""
    return [{"prompt": fmt.trl_prompt(render_prompt(ex.question, template)), "label": ex.label, "options": json.dumps(ex.options, ensure_ascii=False),
             "id": ex.id, "kind": ex.kind} for ex in examples]


def to_trl_dataset(examples: Sequence[RLExample], template: Prompt | str, fmt: PromptFormat = CHAT):
    """A ``datasets.Dataset`` whose extra columns (label, options, id, kind) reach TRL reward functions as kwargs."""
    from datasets import Dataset

    if not examples:
        raise RLDataError("no training examples: the stage's dataset is empty")
    return Dataset.from_list(trl_rows(examples, template, fmt))


def openrlhf_rows(examples: Sequence[RLExample], template: Prompt | str, fmt: PromptFormat = CHAT, tokenizer: Any = None) -> list[dict[str, Any]]:
    """Rows for OpenRLHF: ``--data.input_key prompt`` (chat with ``--data.apply_chat_template``, or plain text for a base
    model, without that flag: ``PromptFormat.openrlhf_prompt``), ``--data.label_key label``.

    The label is ``encode_label(label, options)`` because OpenRLHF hands the reward function only the label
    string; ``datasource`` splits its eval metrics by set.
    """
    from medssr.rl.rewards import encode_label

    return [{"prompt": fmt.openrlhf_prompt(tokenizer, render_prompt(ex.question, template)), "label": encode_label(ex.label, ex.options), "datasource": ex.kind, "id": ex.id}
            for ex in examples]


def write_openrlhf_jsonl(examples: Sequence[RLExample], template: Prompt | str, path: str | os.PathLike, fmt: PromptFormat = CHAT,
                        tokenizer: Any = None) -> int:
    """Write the prompt/label JSONL OpenRLHF's ``--data.prompt_dataset`` reads (atomically)."""
    from medssr.records import write_jsonl

    if not examples:
        raise RLDataError(f"{path}: refusing to write an empty OpenRLHF prompt set")
    return write_jsonl(path, openrlhf_rows(examples, template, fmt, tokenizer))
