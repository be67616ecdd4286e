"""OpenRLHF custom reward file: ``--reward.remote_url /path/to/medssr/rl/openrlhf_reward.py``.

OpenRLHF 0.11.2 imports this file by path (``SingleTurnAgentExecutor`` in openrlhf/utils/agent.py) and calls
``reward_func([query], [prompt], [label])`` one sample at a time, where ``prompt`` is the chat-templated prompt text
and ``query`` is ``tokenizer.decode(prompt_ids + response_ids, skip_special_tokens=False)``. It swallows exceptions
(the run later dies far from the cause), so reward_func never raises: anything it cannot read scores 0 with
valid_answer 0. Only the response is scored: the prompt is cut off by its exact text (or, when decoding changed
whitespace or OpenRLHF left-truncated it, by its whitespace-free text); a query whose prompt cannot be located
scores 0 (``response_found`` 0), so the F.4 prompt's own ``Example: "The answer is A"`` never counts. The label
field is what ``medssr.rl.rewards.encode_label`` wrote; a bare letter ("C") also works (letters A-J, no option texts).
OpenRLHF may run in an environment without medssr installed: the repository root is put on sys.path from this
file's own location, so the one extractor (medssr.answers) is imported, never copied.

A cut-off response is read as cut off (``extract_answer(..., complete=False)``, as votes and evaluation read a
``finish_reason == "length"`` output). The query says which it is: in OpenRLHF 0.11.2
``SingleTurnAgentExecutor.execute`` (openrlhf/utils/agent.py) builds it as
``hf_tokenizer.decode(prompt_token_ids + action_token_ids, skip_special_tokens=False)``, where ``action_token_ids`` is
vLLM's ``outputs[0].token_ids``: they end with the EOS / stop token when the sample stopped by itself and not when
it hit ``max_tokens`` (its own ``truncated`` flag, ``finish_reason == "length"``, is not passed to reward_func).
So a response that ends with an end-of-text / end-of-turn token finished (``rewards.ends_with_stop_token``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

try:
    from medssr.rl.rewards import decode_label, ends_with_stop_token, response_answer
except ImportError:  # OpenRLHF's environment: medssr not installed, import it from this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from medssr.rl.rewards import decode_label, ends_with_stop_token, response_answer

try:
    import torch
except ImportError:  # pragma: no cover - OpenRLHF always has torch; lists keep the function usable without it
    torch = None

_BARE_LETTERS = {k: "" for k in "ABCDEFGHIJ"}


def _as_list(x: Any) -> list:
    if x is None:
        return []
    if isinstance(x, (str, bytes)):
        return [x]
    try:
        return list(x)
    except TypeError:
        return [x]


def _text(x: Any) -> str:
    if isinstance(x, str):
        return x
    if isinstance(x, bytes):
        return x.decode("utf-8", errors="replace")
    return "" if x is None else str(x)


def _label_and_options(label: Any) -> tuple[str | None, dict[str, str]]:
    """(letter, options) from an encode_label string; a bare letter gets placeholder options A-J."""
    s = _text(label).strip()
    if len(s) == 1 and s.upper() in _BARE_LETTERS:
        return s.upper(), _BARE_LETTERS
    try:
        return decode_label(s)
    except ValueError:
        return None, {}


# Non-space characters of the prompt's end searched for in the query when it does not start with the prompt text.
_TAIL = 64
# Characters a decode may put before the prompt (a BOS token such as "<|begin_of_text|>").
_MAX_LEAD = 32


def _squeeze(s: str) -> tuple[str, list[int]]:
    """``s`` without whitespace, and the offset in ``s`` of each kept character."""
    pos = [i for i, c in enumerate(s) if not c.isspace()]
    return "".join(s[i] for i in pos), pos


def response_of(query: str, prompt: str) -> str | None:
    """The generated text of an OpenRLHF query (decoded prompt + response), or None when the prompt is not found.

    The prompt must open the query: exactly, or ignoring whitespace (decoders clean up spaces) with at most a
    short prefix (a BOS) before it or its left part cut off (OpenRLHF left-truncates over-long prompts).
    """
    if query.startswith(prompt):
        return query[len(prompt) :]
    p, _ = _squeeze(prompt)
    q, qpos = _squeeze(query)
    if not p:
        return None
    tail = p[-_TAIL:]
    j = q.find(tail)
    while 0 <= j <= len(p) + _MAX_LEAD:
        end = j + len(tail)
        head = q[:end]
        if p.endswith(head) or (head.endswith(p) and end - len(p) <= _MAX_LEAD):
            return query[qpos[end - 1] + 1 :]
        j = q.find(tail, j + 1)
    return None


def score_one(query: Any, prompt: Any, label: Any) -> tuple[float, float, float]:
    """(reward, valid_answer, response_found) for one sample; only the response after the prompt is read."""
    try:
        response = response_of(_text(query), _text(prompt))
        if response is None:
            return 0.0, 0.0, 0.0
        letter, options = _label_and_options(label)
        # finished or cut off, read from the stop token the decoded query keeps (module docstring)
        answer = response_answer(response, options, complete=ends_with_stop_token(response)) if options else None
        valid = 1.0 if answer is not None else 0.0
        return (1.0 if letter is not None and answer == letter else 0.0), valid, 1.0
    except Exception:  # OpenRLHF hides exceptions; a 0 reward (valid_answer 0) is the visible failure
        return 0.0, 0.0, 0.0


def _tensor(values: list[float]) -> Any:
    return torch.tensor(values, dtype=torch.float32) if torch is not None else values


def reward_func(queries: Any = None, prompts: Any = None, labels: Any = None, **kwargs: Any) -> dict[str, Any]:
    """OpenRLHF entry point: {"rewards", "scores", "extra_logs": {"valid_answer", "response_found"}}, one float per query."""
    try:
        qs, ps, ls = _as_list(queries), _as_list(prompts), _as_list(labels)
        n = len(qs) if queries is not None else max(len(ps), len(ls), 1)
        scored = [score_one(qs[i] if i < len(qs) else "", ps[i] if i < len(ps) else "", ls[i] if i < len(ls) else "") for i in range(n)]
    except Exception:  # never raise into OpenRLHF (see module docstring)
        scored = [(0.0, 0.0, 0.0)]
    rewards, valid, found = ([t[k] for t in scored] for k in range(3))
    return {"rewards": _tensor(rewards), "scores": _tensor(list(rewards)),
            "extra_logs": {"valid_answer": _tensor(valid), "response_found": _tensor(found)}}
