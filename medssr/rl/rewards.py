"""Reward functions shared by every trainer backend: TRL calls them directly, OpenRLHF through openrlhf_reward.py.

The reward is exact match between the answer read by ``medssr.answers.extract_answer`` and the label (the
offline majority vote in stage I, the gold answer in stage II), so training, voting and evaluation read answers
the same way. Every vote over rollouts (online voting, the collapse statistics) is ``medssr.label.vote``'s, with
its seeded tie rule keyed by question: the label stage and the rewards never disagree on a tie, and a tie never
favours the letter A. Only the standard library, medssr.answers and medssr.label.vote are imported: OpenRLHF
loads this in its own env.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from medssr.answers import extract_answer, letters_for
from medssr.label.vote import majority_vote

# End-of-turn / end-of-text / padding tokens a decoder leaves after the answer when it keeps special tokens
# (OpenRLHF decodes with skip_special_tokens=False): "<|im_end|>", "<|eot_id|>", "<|endoftext|>", "</s>", "<eos>", ...
_TRAILING_SPECIAL = re.compile(r"(?:\s*(?:<\|[^<>|\s]{1,64}\|>|</s>|<s>|<eos>|<pad>|<end_of_turn>|\[PAD\]|\[SEP\]))+\s*\Z")
# The tokens that end a generation, as decoded text: a tokenizer's EOS or a chat template's end of turn (Qwen / SmolLM2
# "<|im_end|>" "<|endoftext|>", Llama 3 "<|eot_id|>" "<|eom_id|>" "<|end_of_text|>", Phi-3 "<|end|>", Llama 2 / Mistral
# "</s>", Gemma "<eos>" "<end_of_turn>", gpt-oss "<|return|>"). A response that ends with one stopped by itself.
_ENDS_WITH_STOP = re.compile(r"(?:<\|(?:im_end|endoftext|end_of_text|eot_id|eom_id|end|eos|return)\|>|</s>|<eos>|<end_of_turn>)\s*\Z")


def strip_trailing_special_tokens(text: str) -> str:
    """The text without the special tokens (and whitespace) that end it, so a bare last-line answer stays last."""
    return _TRAILING_SPECIAL.sub("", text)


def ends_with_stop_token(text: str) -> bool:
    """Whether a response decoded with its special tokens kept ends with an end-of-text / end-of-turn token.

    This is how a finished OpenRLHF rollout is told from a cut-off one: see ``openrlhf_reward`` for why the token
    is there exactly when the sample stopped by itself.
    """
    return bool(_ENDS_WITH_STOP.search(text))


def response_answer(text: str, options: Mapping[str, str], complete: bool = True) -> str | None:
    """The answer a response gives, read after dropping its trailing special tokens (every reward reads it so).

    ``complete=False`` for a rollout cut off at the token limit: it is then read as the label stage's votes and the
    evaluation read a ``finish_reason == "length"`` output (``extract_answer(..., complete=False)``), so a cut-off
    last line never earns reward it would not earn as a vote or an answer.
    """
    return extract_answer(strip_trailing_special_tokens(text), options, complete)


def trl_finished(completion_ids: Sequence[Sequence[int]] | None, stop_token_ids: Collection[int] | None, n: int) -> list[bool]:
    """Whether each of TRL's ``n`` completions stopped by itself (True) or was cut at ``max_completion_length``.

    TRL 1.16's own rule (trl/trainer/grpo_trainer.py, ``GRPOTrainer._generate`` for ``completions/clipped_ratio``
    and ``_generate_and_score_completions`` for ``mask_truncated_completions``): a completion is truncated when
    ``ids[-1] not in [*self.eos_token_ids, pad_token_id]``; ``_generate_single_turn`` keeps the first EOS and drops
    what follows it, and medssr's sampler (``medssr.rl.rollouts``) keeps it too. ``stop_token_ids`` is that list
    (``trl_backend.build_trainer`` binds it from the trainer). Without ``completion_ids`` (a caller with text only)
    every completion counts as finished.
    """
    if completion_ids is None:
        return [True] * n
    if stop_token_ids is None:
        raise ValueError("completion_ids were given without stop_token_ids: bind the trainer's EOS and pad ids "
                         "(trl_backend.build_trainer does) so cut-off rollouts are read as cut off")
    if len(completion_ids) != n:
        raise ValueError(f"{len(completion_ids)} completion_ids for {n} completions")
    stops = {int(t) for t in stop_token_ids if t is not None}
    return [len(ids) > 0 and int(ids[-1]) in stops for ids in completion_ids]


def correctness(completion: str, options: Mapping[str, str], label: str) -> float:
    """1.0 when the answer read from the completion is the label, else 0.0 (no answer, wrong, or two answers)."""
    return 1.0 if label and response_answer(completion, options) == label else 0.0


def encode_label(label: str, options: Mapping[str, str]) -> str:
    """The label field of an OpenRLHF JSONL row: letter plus option texts, so answers given by text can be scored."""
    opts = {str(k): str(v) for k, v in options.items()}
    if label not in letters_for(opts):
        raise ValueError(f"label {label!r} is not among the option letters {letters_for(opts)}")
    return json.dumps({"label": label, "options": opts}, ensure_ascii=False, separators=(",", ":"))


def decode_label(s: str) -> tuple[str, dict[str, str]]:
    """Inverse of encode_label; raises ValueError saying what is wrong with the field."""
    if not isinstance(s, str):
        raise ValueError(f"label field must be a JSON string made by encode_label, got {type(s).__name__}")
    try:
        d = json.loads(s)
    except json.JSONDecodeError as e:
        raise ValueError(f"label field is not JSON ({e.msg} at char {e.pos}): {s[:80]!r}") from None
    if not isinstance(d, dict) or "label" not in d or "options" not in d:
        raise ValueError(f'label field must be an object with "label" and "options", got: {s[:80]!r}')
    label, options = d["label"], d["options"]
    if not isinstance(options, dict) or not options or not all(isinstance(k, str) and isinstance(v, str) for k, v in options.items()):
        raise ValueError(f'label field "options" must be a non-empty object of letter -> text strings, got: {str(options)[:80]!r}')
    if not isinstance(label, str) or label not in letters_for(options):
        raise ValueError(f'label field "label" {label!r} is not among the option letters {letters_for(options)}')
    return label, options


def completion_text(completion: Any) -> str:
    """The generated text of a TRL completion: a plain string, or chat messages [{"role", "content"}, ...]."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        return _content_text(completion.get("content"))
    if isinstance(completion, Sequence):
        msgs = [m for m in completion if isinstance(m, Mapping)]
        said = [m for m in msgs if m.get("role", "assistant") == "assistant"] or msgs
        return "\n".join(_content_text(m.get("content")) for m in said)
    return ""


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content blocks: [{"type": "text", "text": "..."}]
        return "".join(b.get("text", "") for b in content if isinstance(b, Mapping) and isinstance(b.get("text"), str))
    return ""


def _options_of(options: Any) -> dict[str, str]:
    """A dataset column value as an options dict (datasets may hand it over as a dict or a JSON string)."""
    if isinstance(options, Mapping):
        return {str(k): str(v) for k, v in options.items() if v is not None}
    if isinstance(options, str):
        try:
            d = json.loads(options)
        except json.JSONDecodeError as e:
            raise ValueError(f"options column is not a JSON object: {options[:80]!r}") from e
        if isinstance(d, dict):
            return {str(k): str(v) for k, v in d.items() if v is not None}
    raise ValueError(f"options column must be a dict or a JSON object string, got {type(options).__name__}")


def group_stats(answers: Sequence[str | None], key: str = "", seed: int = 0) -> dict[str, Any]:
    """Agreement among one prompt's rollouts, the collapse signal: distinct answers, entropy, all_agree, valid share.

    Keys: n, valid_share, distinct (valid answers), entropy (nats over valid answers), all_agree (1.0 when every
    rollout gave the same valid answer), majority (``majority(answers, key, seed)``) and majority_share (its share
    of all rollouts; the same whichever tied letter wins).
    """
    n = len(answers)
    valid = [a for a in answers if a is not None]
    counts = Counter(valid)
    entropy = -sum(c / len(valid) * math.log(c / len(valid)) for c in counts.values()) if valid else 0.0
    major = majority(answers, key, seed)
    return {
        "n": n,
        "valid_share": len(valid) / n if n else 0.0,
        "distinct": len(counts),
        "entropy": entropy + 0.0,  # +0.0 turns -0.0 into 0.0
        "all_agree": 1.0 if n and len(valid) == n and len(counts) == 1 else 0.0,
        "majority": major,
        "majority_share": counts[major] / n if major else 0.0,
    }


def majority(answers: Sequence[str | None], key: str = "", seed: int = 0) -> str | None:
    """The label stage's vote (``medssr.label.vote.majority_vote``): a tie is drawn from ``(seed, key)``, ``key``
    naming the question (its row id); None when no answer is valid."""
    return majority_vote(answers, key, seed).majority


def prompt_groups(prompts: Sequence[Any]) -> list[range]:
    """Index ranges of consecutive equal prompts: the grouping of callers that do not know G (see ``rollout_groups``)."""
    groups: list[range] = []
    start = 0
    for i in range(1, len(prompts) + 1):
        if i == len(prompts) or prompts[i] != prompts[start]:
            groups.append(range(start, i))
            start = i
    return groups


def rollout_groups(prompts: Sequence[Any], ids: Sequence[Any] | None = None, num_generations: int | None = None) -> list[range]:
    """Index ranges of the rollouts of one draw of a question: the groups an online vote and the collapse signals use.

    TRL's ``RepeatSampler`` (trl/trainer/utils.py; ``GRPOTrainer._get_train_sampler`` sets ``mini_repeat_count`` to
    ``num_generations``) hands each sampled row G times in a row, so with G known the groups are consecutive blocks of
    G, each one question (checked on the ``id`` column, else on the prompt): a question drawn twice into one batch
    is two groups of G, never one vote over 2G. Without G (a caller that has only texts) it falls back to runs of
    equal prompts, where two adjacent copies of a question merge.
    """
    if num_generations is None:
        return prompt_groups(prompts)
    n = len(prompts)
    if num_generations < 1 or n % num_generations:
        raise ValueError(f"{n} rollouts do not split into groups of num_generations={num_generations}")
    groups = [range(s, s + num_generations) for s in range(0, n, num_generations)]
    same = ids if ids is not None else prompts
    for g in groups:
        if any(same[i] != same[g.start] for i in g):
            what = "ids" if ids is not None else "prompts"
            raise ValueError(f"rollouts {g.start}..{g.stop - 1} have different {what}: not TRL's layout of "
                             f"num_generations={num_generations} rollouts per question in a row")
    return groups


def group_key(prompts: Sequence[Any], group: range, ids: Sequence[Any] | None = None) -> str:
    """The question a group of rollouts votes on, as the tie rule keys it: its row ``id``, else its prompt text."""
    if ids is not None:
        return str(ids[group.start])
    p = prompts[group.start]
    return p if isinstance(p, str) else json.dumps(p, sort_keys=True, ensure_ascii=False)


def vote_targets(prompts: Sequence[Any], answers: Sequence[str | None], ids: Sequence[Any] | None = None, seed: int = 0,
                 num_generations: int | None = None) -> list[str | None]:
    """Each rollout's online-vote label: the majority of its group (``rollout_groups``), ties keyed by ``group_key``."""
    targets: list[str | None] = [None] * len(answers)
    for g in rollout_groups(prompts, ids, num_generations):
        vote = majority([answers[i] for i in g], group_key(prompts, g, ids), seed)
        for i in g:
            targets[i] = vote
    return targets


def _log_diversity(prompts: Sequence[Any], answers: Sequence[str | None], log_metric: Callable[[str, float], None] | None,
                   ids: Sequence[Any] | None = None, num_generations: int | None = None) -> None:
    """Mean per-group answer diversity through TRL's log_metric (names: answers/distinct, answers/entropy, ...)."""
    if not callable(log_metric) or not answers:
        return
    stats = [group_stats([answers[i] for i in g], group_key(prompts, g, ids)) for g in rollout_groups(prompts, ids, num_generations)]
    for key in ("distinct", "entropy", "all_agree", "valid_share", "majority_share"):
        log_metric(f"answers/{key}", sum(float(s[key]) for s in stats) / len(stats))


def trl_reward(prompts: Sequence[Any], completions: Sequence[Any], label: Sequence[str], options: Sequence[Any] | None = None,
               completion_ids: Sequence[Sequence[int]] | None = None, stop_token_ids: Collection[int] | None = None,
               num_generations: int | None = None, **kwargs: Any) -> list[float]:
    """TRL GRPOTrainer reward: 1.0 per completion whose answer is its row's `label`, using that row's `options`.

    `label` and `options` are dataset columns repeated per generation; `label` may also be an encode_label string
    (then `options` may be omitted). A completion cut off at the token limit (``trl_finished`` on TRL's
    ``completion_ids``) is read as cut off. Logs answer diversity per group when TRL passes `log_metric`.
    """
    finished = trl_finished(completion_ids, stop_token_ids, len(completions))
    rewards: list[float] = []
    answers: list[str | None] = []
    for i, completion in enumerate(completions):
        letter, opts = label[i], (options[i] if options is not None else None)
        if opts is None:
            letter, opts = decode_label(letter)
        opts = _options_of(opts)
        answer = response_answer(completion_text(completion), opts, finished[i])
        answers.append(answer)
        rewards.append(1.0 if letter and answer == letter else 0.0)
    _log_diversity(prompts, answers, kwargs.get("log_metric"), kwargs.get("id"), num_generations)
    return rewards


trl_reward.__name__ = "correctness"  # TRL logs rewards/correctness/mean


def online_vote_reward(prompts: Sequence[Any], completions: Sequence[Any], options: Sequence[Any], seed: int = 0,
                       completion_ids: Sequence[Sequence[int]] | None = None, stop_token_ids: Collection[int] | None = None,
                       num_generations: int | None = None, **kwargs: Any) -> list[float]:
    """TTRL-style ablation (paper Fig. 6): the label is the majority answer of the prompt's own rollouts, voted online.

    The rollouts of one question are TRL's blocks of ``num_generations`` (``rollout_groups``; without it, runs of
    equal prompts). Ties are broken as the label stage breaks them, by a draw keyed by ``(seed, the row's id
    column)`` (see ``vote_targets``); a group with no valid answer gets 0 everywhere. Cut-off completions are read
    as cut off (``trl_finished``). With several processes TRL hands each one only its share of a group, so the
    vote is over that share: run this ablation on one process.
    """
    finished = trl_finished(completion_ids, stop_token_ids, len(completions))
    answers = [response_answer(completion_text(c), _options_of(options[i]), finished[i]) for i, c in enumerate(completions)]
    targets = vote_targets(prompts, answers, kwargs.get("id"), seed, num_generations)
    rewards = [1.0 if t is not None and a == t else 0.0 for a, t in zip(answers, targets, strict=True)]
    _log_diversity(prompts, answers, kwargs.get("log_metric"), kwargs.get("id"), num_generations)
    return rewards


online_vote_reward.__name__ = "online_vote"  # TRL logs rewards/online_vote/mean
