"""OpenRLHF custom reward file: ``--reward.remote_url /path/to/medssr/rl/openrlhf_reward.py``.

OpenRLHF 0.11.2 imports this file by path inside its vLLM engine actor and calls ``reward_func(queries, prompts,
labels)`` one sample at a time; it swallows exceptions (the run later dies far from the cause), so reward_func
never raises: anything it cannot read scores 0 with valid_answer 0. The label field is what
``medssr.rl.rewards.encode_label`` wrote; a bare letter ("C") also works (letters A-J, no option texts).
OpenRLHF may run in an environment without medssr installed: the repository root is put on sys.path from this
file's own location, so the one extractor (medssr.answers) is imported, never copied.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

try:
    from medssr.answers import extract_answer
    from medssr.rl.rewards import decode_label
except ImportError:  # OpenRLHF's environment: medssr not installed, import it from this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from medssr.answers import extract_answer
    from medssr.rl.rewards import decode_label

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


def score_one(query: Any, prompt: Any, label: Any) -> tuple[float, float]:
    """(reward, valid_answer) for one sample; the response is the query after its prompt."""
    try:
        q, p = _text(query), _text(prompt)
        response = q[len(p) :] if p and q.startswith(p) else q
        letter, options = _label_and_options(label)
        answer = extract_answer(response, options) if options else None
        valid = 1.0 if answer is not None else 0.0
        return (1.0 if letter is not None and answer == letter else 0.0), valid
    except Exception:  # OpenRLHF hides exceptions; a 0 reward (valid_answer 0) is the visible failure
        return 0.0, 0.0


def _tensor(values: list[float]) -> Any:
    return torch.tensor(values, dtype=torch.float32) if torch is not None else values


def reward_func(queries: Any = None, prompts: Any = None, labels: Any = None, **kwargs: Any) -> dict[str, Any]:
    """OpenRLHF entry point: {"rewards", "scores", "extra_logs": {"valid_answer"}} with one float per query."""
    try:
        qs, ps, ls = _as_list(queries), _as_list(prompts), _as_list(labels)
        n = len(qs) if queries is not None else max(len(ps), len(ls), 1)
        pairs = [score_one(qs[i] if i < len(qs) else "", ps[i] if i < len(ps) else "", ls[i] if i < len(ls) else "") for i in range(n)]
    except Exception:  # never raise into OpenRLHF (see module docstring)
        n = 1
        pairs = [(0.0, 0.0)]
    rewards = [r for r, _ in pairs]
    valid = [v for _, v in pairs]
    return {"rewards": _tensor(rewards), "scores": _tensor(list(rewards)), "extra_logs": {"valid_answer": _tensor(valid)}}
