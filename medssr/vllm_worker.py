"""The engine side of the ``vllm`` sampling backend: one vLLM engine in its own process and environment.

vLLM 0.32 pins transformers <5.20 and medssr pins 5.23, so the engine lives in ``.venv-vllm`` (``make vllm-env``)
and ``medssr.sampling.VLLMSampler`` (in ``.venv``) starts ``.venv-vllm/bin/python -m medssr.vllm_worker`` with
the repository on PYTHONPATH and talks JSON lines over its stdin/stdout. A worker process rather than
``vllm serve`` + the OpenAI client because the offline engine keeps what the sampler needs and HTTP does not
give cleanly: token-id prompts rendered by medssr's own tokenizer, per-request seeds, ``allowed_token_ids`` for
the constrained pass, and an in-engine logits processor for the early stop at a committed answer. Closing the
pipe (or ``{"op": "close"}``) ends the process, which releases the engine's memory for the next checkpoint.

This module imports only the standard library, vLLM, ``medssr.answers`` and ``medssr.early_stop`` (pure Python),
because it runs where medssr's own dependencies are not installed.

Requests, one JSON object per line; each gets one reply line ``{"ok": true, ...}`` or ``{"ok": false, "error"}``:
``start`` {model, engine: LLM kwargs} -> {start_s, pid, max_model_len}; ``sample`` {prompt_ids, n, temperature,
top_p, top_k, max_tokens, stop, seeds, options} -> {results: [[{text, token_ids, finish_reason, stop_reason}]]};
``choice`` {prompt_ids, allowed} -> {tokens}; ``close`` -> exits.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any

from medssr.early_stop import BOUNDARY_CHARS, CommitWatch, IncrementalText

try:  # the logits processor must subclass vLLM's; outside .venv-vllm only the protocol helpers are importable
    from vllm.v1.sample.logits_processor import AdapterLogitsProcessor
except ImportError:  # pragma: no cover - .venv imports this module only for its constants
    AdapterLogitsProcessor = object  # type: ignore[assignment,misc]

OPTIONS_KEY = "medssr_answer_options"  # SamplingParams.extra_args key carrying a question's options
PROCESSOR = "medssr.vllm_worker:AnswerStopProcessor"


class _RequestStop:
    """One request's early stop: once the decoded output commits an answer, every later logit but EOS is -inf.

    Decides as ``has_committed_answer(tok.decode(output_ids))`` would on each token that brings a boundary
    character, but in linear time (``medssr.early_stop``): the text is decoded incrementally and only its tail is
    checked; a stop is confirmed once on the full decode."""

    def __init__(self, tok: Any, options: dict[str, str], eos_id: int):
        self.tok, self.options, self.eos_id = tok, options, eos_id
        self.seen, self.committed = 0, False
        self._restart()

    def _restart(self) -> None:
        self.text, self.watch = IncrementalText(self.tok), CommitWatch(self.options)

    def __call__(self, output_ids: list[int], logits: Any) -> Any:
        if len(output_ids) < self.text.read:  # the engine took tokens back: the next check reads the output afresh
            self._restart()
        if not self.committed and len(output_ids) > self.seen:
            new = self.tok.decode(output_ids[self.seen:], skip_special_tokens=True)
            self.seen = len(output_ids)
            if BOUNDARY_CHARS.intersection(new):
                added, pending = self.text.update(output_ids)
                self.committed = self.watch.feed(added, True, pending=pending,
                                                 full_text=lambda: self.tok.decode(output_ids, skip_special_tokens=True))
        if self.committed:
            keep = logits[self.eos_id].clone()
            logits.fill_(float("-inf"))
            logits[self.eos_id] = keep if keep.isfinite() else 0.0
        return logits


class AnswerStopProcessor(AdapterLogitsProcessor):  # type: ignore[misc,valid-type]
    """vLLM V1 logits processor: the hf backend's rule (``has_committed_answer``) ends a sample with EOS.

    Requests opt in with ``SamplingParams(extra_args={OPTIONS_KEY: options})``; others are untouched."""

    def __init__(self, vllm_config: Any, device: Any, is_pin_memory: bool):
        super().__init__(vllm_config, device, is_pin_memory)
        self.tokenizer_path = vllm_config.model_config.tokenizer
        self._tok: Any = None

    def is_argmax_invariant(self) -> bool:
        return False

    def new_req_logits_processor(self, params: Any) -> _RequestStop | None:
        options = (params.extra_args or {}).get(OPTIONS_KEY)
        if not options:
            return None
        if self._tok is None:
            from transformers import AutoTokenizer

            self._tok = AutoTokenizer.from_pretrained(self.tokenizer_path)
        return _RequestStop(self._tok, options, int(self._tok.eos_token_id))


class Engine:
    """The vLLM ``LLM`` and the three operations the sampler asks of it."""

    def __init__(self, model: str, engine: dict[str, Any]):
        import vllm
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            # seeded requests crash chunked prefill on CPU (GOTCHAS); eager mode starts in ~20 s instead of ~100 s
            engine = {"enable_chunked_prefill": False, "enforce_eager": True, **engine}
        self.vllm = vllm
        t0 = time.perf_counter()
        self.llm = vllm.LLM(model=model, logits_processors=[PROCESSOR], **engine)
        self.start_s = time.perf_counter() - t0

    def sample(self, req: dict[str, Any]) -> list[list[dict[str, Any]]]:
        params = []
        for seed, options in zip(req["seeds"], req["options"], strict=True):
            params.append(self.vllm.SamplingParams(
                n=req["n"], temperature=req["temperature"], top_p=req["top_p"], top_k=req["top_k"] if req["top_k"] > 0 else -1,
                max_tokens=req["max_tokens"], seed=seed, stop=req["stop"] or None, extra_args={OPTIONS_KEY: options} if options else None))
        outs = self.llm.generate([{"prompt_token_ids": ids} for ids in req["prompt_ids"]], params, use_tqdm=False)
        return [[{"text": c.text, "token_ids": list(c.token_ids), "finish_reason": c.finish_reason,
                  "stop_reason": c.stop_reason if isinstance(c.stop_reason, str | int | None) else str(c.stop_reason)}
                 for c in o.outputs] for o in outs]

    def choice(self, req: dict[str, Any]) -> list[int]:
        params = [self.vllm.SamplingParams(n=1, temperature=0.0, max_tokens=1, allowed_token_ids=list(a)) for a in req["allowed"]]
        outs = self.llm.generate([{"prompt_token_ids": ids} for ids in req["prompt_ids"]], params, use_tqdm=False)
        return [int(o.outputs[0].token_ids[0]) for o in outs]


def serve(inp: Any, out: Any) -> None:
    """Answer requests until ``close`` or end of input."""
    engine: Engine | None = None
    for line in inp:
        if not line.strip():
            continue
        req = json.loads(line)
        op = req.get("op")
        try:
            if op == "start":
                engine = Engine(req["model"], req["engine"])
                reply: dict[str, Any] = {"start_s": engine.start_s, "pid": os.getpid(),
                                         "max_model_len": engine.llm.llm_engine.model_config.max_model_len}
            elif op == "close":
                out.write(json.dumps({"ok": True}) + "\n")
                out.flush()
                return
            elif engine is None:
                raise RuntimeError(f"op {op!r} before 'start'")
            elif op == "sample":
                reply = {"results": engine.sample(req)}
            elif op == "choice":
                reply = {"tokens": engine.choice(req)}
            else:
                raise ValueError(f"unknown op {op!r}")
            out.write(json.dumps({"ok": True, **reply}) + "\n")
        except Exception:
            out.write(json.dumps({"ok": False, "error": traceback.format_exc()}) + "\n")
        out.flush()


def main() -> None:
    # Replies get a private copy of stdout; fd 1 becomes stderr so vLLM's logs (and its engine process's) never
    # interleave with the protocol.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    serve(sys.stdin, out)


if __name__ == "__main__":
    main()
