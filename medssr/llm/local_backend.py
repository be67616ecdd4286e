"""Local transformers causal LM as the question generator (the embedded CPU default: SmolLM2-135M-Instruct).

Prompts are batched ``cfg.concurrency`` at a time, sorted by length and left-padded; on CPU each batch runs as two
halves side by side, one Python thread and half of torch's threads each (``LocalGenerator.parts``). Sampling is
seeded per request from its cache key with one ``torch.Generator`` per row, so a request's text does not depend on
which other requests share its batch (up to float rounding: the same batch gives the same text run to run). JSON schemas are not enforced here (the prompt must ask for JSON); the
``assistant_prefix`` is appended after the chat template's generation prompt and included in the text.

``guided_layout`` (``synth.generator.guided_layout``) steers one ``generate`` call through the plain-text question
layout: the model writes the stem, each option after a forced ``A.``/``B.``/..., every part ending at its first
newline, then picks the key among the option letters after a forced ``Answer:``. A 135M model left alone breaks
the layout in nearly every reply (0 of 48 accepted, measured); guided, only the content is the model's.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

from medssr.config import GeneratorCfg, set_offline_env
from medssr.llm.base import Finish, Generator, LLMError, LLMRequest, LLMResponse, seed_from_key
from medssr.llm.ledger import Ledger
from medssr.models import weights_fingerprint


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


GUIDED_LETTERS = "ABCD"  # four options, as the small prompts ask ("options A. to D.")
STEM_SHARE, OPTION_SHARE, MIN_STEM_TOKENS = 0.5, 0.125, 8  # of max_tokens: the stem and each option


class _LayoutVocab:
    """Token classes the guide needs, from one scan of the vocabulary."""

    def __init__(self, tok: Any):
        texts = tok.batch_decode([[i] for i in range(len(tok))])
        self.line_end = [i for i, t in enumerate(texts) if "\n" in t and t.endswith("\n") and "\r" not in t]
        self.mid_line_break = [i for i, t in enumerate(texts) if ("\n" in t and not t.endswith("\n")) or "\r" in t]
        self.no_leading_space = [i for i, t in enumerate(texts) if not (t.startswith(" ") and t.strip())]


class _LayoutGuide:
    """Logits processor: a per-row state machine that keeps each row inside the question layout.

    Parts are the stem and the options; a part ends when the model writes a token ending in a newline (not
    before a minimum of tokens; forced at the part's token budget, which marks the row truncated; tokens with
    text after a newline are banned, and an option's first token must start with a space). Between parts the
    next lead (``A.`` ... ``D.``, then ``Answer:``) is forced token by token; after ``Answer:`` only the letter
    tokens are allowed, then EOS. EOS is banned everywhere else, so every reply has the whole layout.
    """

    def __init__(self, tok: Any, width: int, rows: int, max_tokens: int, vocab: _LayoutVocab, eos_ids: list[int]):
        enc = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
        self.leads = [enc(f"{L}.") for L in GUIDED_LETTERS] + [enc("Answer:")]
        self.letters = [enc(f" {L}") for L in GUIDED_LETTERS]
        if any(len(ids) != 1 for ids in self.letters):
            raise ValueError(f"guided_layout needs ' A'..' D' to be single tokens for this tokenizer, got {self.letters}")
        self.letters = [ids[0] for ids in self.letters]
        self.width, self.eos, self.newline = width, list(eos_ids), enc("\n")[-1]
        self.vocab = vocab
        self.newlines = set(vocab.line_end)
        self.budgets = [max(MIN_STEM_TOKENS + 1, int(max_tokens * STEM_SHARE))] + [max(2, int(max_tokens * OPTION_SHARE))] * len(GUIDED_LETTERS)
        self.max_new_tokens = sum(self.budgets) + len(self.budgets) + sum(len(x) for x in self.leads) + 2  # + newlines, key, EOS
        self.part = [0] * rows  # 0 stem, 1..4 options, 5 the key letter, 6 done
        self.count = [0] * rows  # tokens written in the current part
        self.queue: list[list[int]] = [[] for _ in range(rows)]  # forced tokens still to come
        self.truncated = [False] * rows

    def _observe(self, r: int, t: int) -> None:
        if self.queue[r]:
            self.queue[r].pop(0)
            return
        n_parts = len(self.budgets)
        if self.part[r] >= n_parts:
            self.part[r] = n_parts + 1  # the letter was written: EOS next
            return
        self.count[r] += 1
        if t in self.newlines:
            self.queue[r] = list(self.leads[self.part[r]])
            self.part[r] += 1
            self.count[r] = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        step = input_ids.shape[1] - self.width
        n_parts = len(self.budgets)
        for r in range(scores.shape[0]):
            if step > 0:
                self._observe(r, int(input_ids[r, -1]))
            if self.queue[r]:
                allowed = [self.queue[r][0]]
            elif self.part[r] == n_parts:
                allowed = self.letters
            elif self.part[r] > n_parts:
                allowed = self.eos[:1]
            elif self.count[r] >= self.budgets[self.part[r]]:
                allowed, self.truncated[r] = [self.newline], True
            else:
                scores[r, self.eos] = float("-inf")
                scores[r, self.vocab.mid_line_break] = float("-inf")  # a newline with text after it would break the layout
                if self.count[r] < (MIN_STEM_TOKENS if self.part[r] == 0 else 1):
                    scores[r, self.vocab.line_end] = float("-inf")
                if self.count[r] == 0 and self.part[r] > 0:  # "B. text", never "B.text" (not an option line)
                    scores[r, self.vocab.no_leading_space] = float("-inf")
                continue
            keep = scores[r, allowed].clone()
            scores[r] = float("-inf")
            scores[r, allowed] = keep
        return scores


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
        model_id = f"{cfg.model}#{weights_fingerprint(path)}" if Path(path).is_dir() else cfg.model
        if cfg.guided_layout:
            model_id += "+guided-layout-v2"  # guided replies differ from free ones: never share cache entries
        super().__init__(cfg, cache_dir, Ledger(free=True), name=name, model_id=model_id)
        eos = self.model.generation_config.eos_token_id if self.model.generation_config is not None else None
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {e for e in [*eos, self.tok.eos_token_id] if e is not None}
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        self.tok.padding_side = "left"
        self.pad_id = self.tok.pad_token_id
        self._layout_vocab: _LayoutVocab | None = None
        self._toks = [self.tok]  # one tokenizer per side-by-side generate call (_generate_split)

    def prompt_ids(self, request: LLMRequest) -> list[int]:
        """Chat template with a generation prompt, then the prefix: the exact tokens the model continues."""
        text = self.tok.apply_chat_template([{"role": r, "content": c} for r, c in request.messages],
                                            add_generation_prompt=True, tokenize=False)
        text += request.assistant_prefix or ""
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _execute(self, todo: list[tuple[int, LLMRequest, str]], finish: Finish, max_usd: float | None) -> None:
        items = sorted(((i, req, key, self.prompt_ids(req)) for i, req, key in todo), key=lambda t: len(t[3]))
        bs = max(1, self.cfg.concurrency)
        if self.cfg.guided_layout:
            self.layout_vocab()  # built once, before any worker thread needs it
        for start in range(0, len(items), bs):
            batch = items[start:start + bs]
            t0 = time.perf_counter()
            try:
                outs = self._generate_split([ids for *_, ids in batch], [key for _, _, key, _ in batch])
            except (RuntimeError, ValueError, IndexError) as e:  # e.g. a prompt longer than the model's context
                dt = time.perf_counter() - t0
                for i, _, key, ids in batch:
                    finish(i, key, LLMResponse("", len(ids), 0, False, 0.0, dt, error=f"{type(e).__name__}: {e} (local generation failed)"))
                continue
            dt = time.perf_counter() - t0
            for (i, req, key, ids), (text, n_out, reason) in zip(batch, outs, strict=True):
                finish(i, key, LLMResponse((req.assistant_prefix or "") + text, len(ids), n_out, False, 0.0, dt, finish_reason=reason))

    def parts(self, n: int) -> list[range]:
        """How a batch of ``n`` requests is cut into the ``generate`` calls that run side by side: on CPU two halves
        (run_split gives each half of torch's threads), else one call. The cut depends on ``n`` only, so a request's
        company, and so its text, is the same on any machine and thread count."""
        if n < 2 or self.model.device.type != "cpu":
            return [range(n)]
        return [range(0, (n + 1) // 2), range((n + 1) // 2, n)]

    def _generate_split(self, prompts: list[list[int]], keys: list[str]) -> list[tuple[str, int, str]]:
        """``_generate`` over ``parts``, one Python thread each (each with its own tokenizer); rows in order."""
        from medssr.sampling import run_split

        cuts = self.parts(len(prompts))
        while len(self._toks) < len(cuts):
            self._toks.append(copy.deepcopy(self.tok))  # a fast tokenizer must not serve two threads at once
        jobs = [(lambda r=r, tok=tok: self._generate([prompts[i] for i in r], [keys[i] for i in r], tok))
                for r, tok in zip(cuts, self._toks, strict=False)]
        return [row for part in run_split(jobs) for row in part]

    def _generate(self, prompts: list[list[int]], keys: list[str], tok: Any = None) -> list[tuple[str, int, str]]:
        """One left-padded ``generate`` call; returns (text, generated token count incl. EOS, finish_reason) per row."""
        import torch

        tok = tok or self.tok
        width = max(len(p) for p in prompts)
        guide = None
        if self.cfg.guided_layout:
            first = [tok.eos_token_id] if tok.eos_token_id in self.eos_ids else []
            eos = first + sorted(self.eos_ids - set(first))  # the tokenizer's own EOS ends a guided reply
            guide = _LayoutGuide(tok, width, len(prompts), self.cfg.max_tokens, self.layout_vocab(), eos)
        gens = [torch.Generator().manual_seed(seed_from_key(k)) for k in keys]
        rows = self._decode(prompts, width, gens, guide.max_new_tokens if guide else self.cfg.max_tokens, guide)
        results = []
        for r, row in enumerate(rows):
            stop = next((j for j, t in enumerate(row) if t in self.eos_ids), None)
            n = len(row) if stop is None else stop + 1
            text = tok.decode(row[:stop] if stop is not None else row, skip_special_tokens=True)
            reason = "stop" if stop is not None and not (guide and guide.truncated[r]) else "length"
            results.append((text, n, reason))
        return results

    def layout_vocab(self) -> _LayoutVocab:
        if self._layout_vocab is None:
            self._layout_vocab = _LayoutVocab(self.tok)
        return self._layout_vocab

    def _decode(self, prompts: list[list[int]], width: int, gens: list[Any], max_new_tokens: int, guide: Any) -> list[list[int]]:
        """Left-padded batched ``generate``; each row samples with its own generator. Returns the new tokens per row."""
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        pad = self.pad_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        gen_cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad,
                                   eos_token_id=sorted(self.eos_ids), repetition_penalty=1.0)
        procs = LogitsProcessorList([guide] if guide else [])
        if self.cfg.temperature > 0:
            procs.append(_SeededSampler(gens, self.cfg.temperature))
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids, attention_mask=mask, generation_config=gen_cfg, logits_processor=procs)
        return out[:, width:].tolist()
