"""Local transformers causal LM as the question generator (the embedded CPU default: SmolLM2-135M-Instruct).

Prompts are batched ``cfg.concurrency`` at a time, sorted by length and left-padded. Sampling is seeded per
request from its cache key with one ``torch.Generator`` per row, so a request's text does not depend on which
other requests share its batch. JSON schemas are not enforced here (the prompt must ask for JSON); the
``assistant_prefix`` is appended after the chat template's generation prompt and included in the text.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from medssr.config import GeneratorCfg, set_offline_env
from medssr.llm.base import Finish, Generator, LLMError, LLMRequest, LLMResponse, seed_from_key
from medssr.llm.ledger import Ledger

_FINGERPRINT_FILES = ("config.json", "tokenizer_config.json", "chat_template.jinja", "tokenizer.json")
_HEAD = 8 << 20


def model_fingerprint(model_dir: str | Path) -> str:
    """Cheap identity of a model directory (configs, tokenizer, weight sizes and their first/last 8 MiB), stable
    across copies of the directory, so a moved checkout or a DVC experiment copy keeps its cache."""
    d = Path(model_dir)
    h = hashlib.sha256()
    for name in _FINGERPRINT_FILES:
        if (d / name).exists():
            h.update(name.encode() + b"\0" + (d / name).read_bytes())
    for w in sorted(d.glob("*.safetensors")) + sorted(d.glob("*.bin")):
        size = w.stat().st_size
        h.update(f"{w.name}:{size}".encode())
        with w.open("rb") as f:
            h.update(f.read(_HEAD))
            if size > 2 * _HEAD:
                f.seek(size - _HEAD)
                h.update(f.read(_HEAD))
    return h.hexdigest()[:16]


class _SeededSampler:
    """Logits processor that samples each row with its own generator and leaves only that token possible,
    so HF's greedy step picks it: per-request seeds inside one batched ``generate`` call."""

    def __init__(self, generators: list[Any], temperature: float):
        self.generators = generators
        self.temperature = temperature

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        picks = torch.cat([torch.multinomial(probs[b], 1, generator=g) for b, g in enumerate(self.generators)])
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, picks.view(-1, 1), 0.0)
        return out


class LocalGenerator(Generator):
    def __init__(self, cfg: GeneratorCfg, cache_dir: str | Path, model_dir: str | None = None):
        set_offline_env()
        from medssr.models import ModelError, load_causal_lm, resolve_model_dir

        src = model_dir or cfg.model
        try:
            path = resolve_model_dir(src)
            self.model, self.tok = load_causal_lm(path)
        except (ModelError, OSError, ValueError) as e:
            where = "model_dir" if model_dir else "synth.generator.model"
            raise LLMError(f"{where} {src!r}: local generator model cannot be loaded: {e}") from None
        name = f"local:{cfg.model}" if model_dir is None else f"local:{Path(model_dir).name}"
        model_id = f"{cfg.model}#{model_fingerprint(path)}" if Path(path).is_dir() else cfg.model
        super().__init__(cfg, cache_dir, Ledger(free=True), name=name, model_id=model_id)
        eos = self.model.generation_config.eos_token_id if self.model.generation_config is not None else None
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {e for e in [*eos, self.tok.eos_token_id] if e is not None}
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        self.tok.padding_side = "left"

    def prompt_ids(self, request: LLMRequest) -> list[int]:
        """Chat template with a generation prompt, then the prefix: the exact tokens the model continues."""
        text = self.tok.apply_chat_template([{"role": r, "content": c} for r, c in request.messages],
                                            add_generation_prompt=True, tokenize=False)
        text += request.assistant_prefix or ""
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _execute(self, todo: list[tuple[int, LLMRequest, str]], finish: Finish, max_usd: float | None) -> None:
        items = sorted(((i, req, key, self.prompt_ids(req)) for i, req, key in todo), key=lambda t: len(t[3]))
        bs = max(1, self.cfg.concurrency)
        for start in range(0, len(items), bs):
            batch = items[start:start + bs]
            t0 = time.perf_counter()
            try:
                outs = self._generate([ids for *_, ids in batch], [key for _, _, key, _ in batch])
            except (RuntimeError, ValueError, IndexError) as e:  # e.g. a prompt longer than the model's context
                dt = time.perf_counter() - t0
                for i, _, key, ids in batch:
                    finish(i, key, LLMResponse("", len(ids), 0, False, 0.0, dt, error=f"{type(e).__name__}: {e} (local generation failed)"))
                continue
            dt = time.perf_counter() - t0
            for (i, req, key, ids), (text, n_out, reason) in zip(batch, outs, strict=True):
                finish(i, key, LLMResponse((req.assistant_prefix or "") + text, len(ids), n_out, False, 0.0, dt, finish_reason=reason))

    def _generate(self, prompts: list[list[int]], keys: list[str]) -> list[tuple[str, int, str]]:
        """One left-padded ``generate`` call; returns (text, generated token count incl. EOS, finish_reason) per row."""
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        pad = self.tok.pad_token_id
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        gen_cfg = GenerationConfig(max_new_tokens=self.cfg.max_tokens, do_sample=False, num_beams=1, pad_token_id=pad,
                                   eos_token_id=sorted(self.eos_ids), repetition_penalty=1.0)
        procs = LogitsProcessorList()
        if self.cfg.temperature > 0:
            gens = [torch.Generator().manual_seed(seed_from_key(k)) for k in keys]
            procs.append(_SeededSampler(gens, self.cfg.temperature))
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids, attention_mask=mask, generation_config=gen_cfg, logits_processor=procs)
        results = []
        for row in out[:, width:].tolist():
            n = len(row)
            stop = next((j for j, t in enumerate(row) if t in self.eos_ids), None)
            if stop is not None:
                n = stop + 1
            text = self.tok.decode(row[:stop] if stop is not None else row, skip_special_tokens=True)
            results.append((text, n, "stop" if stop is not None else "length"))
        return results
