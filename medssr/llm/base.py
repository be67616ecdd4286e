"""Generator interface shared by every LLM backend: request/response types, the cached run loop, make_generator.

A backend only knows how to execute requests that missed the cache; ``Generator.run`` serves hits, writes
each success to the cache the moment it arrives (a killed run loses nothing finished), keeps the ledger and
never raises for a single failed request: the response carries ``error`` instead.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from medssr.config import GeneratorCfg, PriceCfg
from medssr.errors import MedssrError
from medssr.llm.cache import ResponseCache, request_key
from medssr.llm.ledger import Ledger, LedgerEntry

log = logging.getLogger("medssr.llm")

ROLES = ("system", "user", "assistant")
BUDGET_ERROR = "budget exhausted"  # prefix of the error for requests never sent because max_usd was reached
BACKENDS = ("openai", "anthropic", "openai_compatible", "local")

OnDone = Callable[[int, "LLMResponse"], None]
Finish = Callable[[int, str, "LLMResponse"], None]


class LLMError(MedssrError, RuntimeError):
    """A generator that cannot be configured: missing API key, unknown backend, missing local model."""


class MalformedResponse(ValueError):
    """The server answered 200 but the body is not a usable chat response."""


@dataclass(frozen=True)
class LLMRequest:
    """One chat request. ``nonce`` is part of the cache key: it tells deliberate repeats of one prompt apart."""

    messages: tuple[tuple[str, str], ...]  # ((role, content), ...), role in system|user|assistant
    json_schema: dict | None = field(default=None, hash=False)  # structured output where the backend supports it
    schema_name: str = "question"
    assistant_prefix: str | None = None  # prefill the assistant turn (local, anthropic); openai ignores it
    nonce: str = ""

    def __post_init__(self) -> None:
        msgs = tuple(tuple(m) for m in self.messages)
        if not msgs:
            raise ValueError("LLMRequest.messages: at least one message is required")
        for n, m in enumerate(msgs):
            if len(m) != 2 or m[0] not in ROLES or not isinstance(m[1], str):
                raise ValueError(f"LLMRequest.messages[{n}]: expected (role, text) with role in {ROLES}, got {m!r:.80}")
        object.__setattr__(self, "messages", msgs)


def chat(user: str, system: str | None = None, **kwargs: Any) -> LLMRequest:
    """Shorthand for the common one-turn request."""
    msgs = ((("system", system),) if system else ()) + (("user", user),)
    return LLMRequest(messages=msgs, **kwargs)


@dataclass
class LLMResponse:
    """What came back. ``text`` is the whole assistant turn: an ``assistant_prefix`` is included, and for
    structured output it is the JSON text of the arguments/content."""

    text: str
    input_tokens: int
    output_tokens: int
    cached: bool  # served from the on-disk cache, no call made
    cost_usd: float  # the original call's cost, also for cache hits (the ledger counts spend only for calls made)
    latency_s: float
    error: str | None = None  # set when the request failed after all retries or was not retryable
    finish_reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def seed_from_key(key: str) -> int:
    """A 32-bit seed derived from the cache key, so a request samples the same way wherever it runs."""
    return int(key[:8], 16)


class Generator:
    """Base class: cache, ledger, progress bar and callbacks around a backend's ``_execute``."""

    name: str
    ledger: Ledger

    def __init__(self, cfg: GeneratorCfg, cache_dir: str | Path, ledger: Ledger, name: str, model_id: str):
        self.cfg = cfg
        self.cache = ResponseCache(cache_dir)
        self.ledger = ledger
        self.name = name
        self.model_id = model_id  # what identifies the weights in the cache key
        self._secrets: list[str] = []

    # -- keys and hygiene -------------------------------------------------------------------------
    def key(self, request: LLMRequest) -> str:
        """Cache key. base_url is left out on purpose: moving to a proxy or another host of the same model
        must not invalidate paid-for responses; the backend name and model name identify the model."""
        structured = self.cfg.structured and request.json_schema is not None
        return request_key({
            "backend": self.cfg.backend,
            "model": self.model_id,
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
            "schema": request.json_schema if structured else None,
            "schema_name": request.schema_name if structured else None,
            "messages": [list(m) for m in request.messages],
            "prefix": request.assistant_prefix,
            "nonce": request.nonce,
        })

    def _scrub(self, text: str) -> str:
        for s in self._secrets:
            if s:
                text = text.replace(s, "***")
        return text

    def _budget_error(self, max_usd: float | None) -> str | None:
        if max_usd is not None and self.ledger.spend_usd >= max_usd:
            return f"{BUDGET_ERROR}: spent ${self.ledger.spend_usd:.4f} of max_usd ${max_usd:.4f}; request not sent"
        return None

    # -- the run loop -----------------------------------------------------------------------------
    def run(self, requests: Sequence[LLMRequest], on_done: OnDone | None = None, progress: bool = True,
            max_usd: float | None = None) -> list[LLMResponse]:
        """Execute ``requests`` (cache first, then the backend, cfg.concurrency at a time); responses in order.

        ``on_done(index, response)`` is called as each finishes, in the calling thread. Identical requests in
        one call are sent once. ``max_usd`` stops sending once the ledger's spend reaches it (those get error).
        """
        from tqdm.auto import tqdm

        requests = list(requests)
        out: list[LLMResponse | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc=self.name, unit="req", disable=not progress, dynamic_ncols=True)
        errors = 0

        def deliver(i: int, resp: LLMResponse) -> None:
            nonlocal errors
            out[i] = resp
            errors += resp.error is not None
            bar.update(1)
            bar.set_postfix_str(f"${self.ledger.spend_usd:.4f} hits={self.ledger.cache_hits} err={errors}", refresh=False)
            if on_done is not None:
                on_done(i, resp)

        groups: dict[str, list[int]] = {}  # key -> indices waiting for that key (first one is sent)
        served: dict[str, LLMResponse] = {}
        for i, req in enumerate(requests):
            k = self.key(req)
            if k in served:
                self._record_hit(k, served[k])
                deliver(i, replace(served[k]))
            elif k in groups:
                groups[k].append(i)
            elif (hit := self.cache.get(k)) is not None:
                served[k] = self._from_cache(hit)
                self._record_hit(k, served[k])
                deliver(i, served[k])
            else:
                groups[k] = [i]

        def finish(i: int, key: str, resp: LLMResponse) -> None:
            if resp.error is None:
                self.cache.put(key, {"text": resp.text, "input_tokens": resp.input_tokens, "output_tokens": resp.output_tokens,
                                     "cost_usd": resp.cost_usd, "finish_reason": resp.finish_reason, "generator": self.name})
            elif not resp.error.startswith(BUDGET_ERROR):  # unsent requests are neither logged one by one nor counted
                log.warning("%s: request %d failed: %s", self.name, i, resp.error)
            if resp.error is None or not resp.error.startswith(BUDGET_ERROR):
                self.ledger.record(LedgerEntry(key, self.cfg.model, resp.input_tokens, resp.output_tokens, resp.cost_usd,
                                               cached=False, latency_s=resp.latency_s, failed=resp.error is not None))
            deliver(i, resp)
            for j in groups[key][1:]:
                dup = replace(resp, cached=resp.error is None, latency_s=0.0)
                if resp.error is None:
                    self._record_hit(key, dup)
                deliver(j, dup)

        todo = [(idx[0], requests[idx[0]], k) for k, idx in groups.items()]
        try:
            if todo:
                self._execute(todo, finish, max_usd)
        finally:
            bar.close()
        missing = [i for i, r in enumerate(out) if r is None]
        if missing:  # a backend bug, not a request failure
            raise RuntimeError(f"{self.name}: backend returned no response for requests {missing[:10]}")
        unsent = sum(1 for r in out if r is not None and r.error is not None and r.error.startswith(BUDGET_ERROR))
        if unsent:
            log.warning("%s: %d requests not sent: max_usd $%.4f reached", self.name, unsent, max_usd or 0.0)
        log.info("%s: %d requests, %d cache hits, %d failed; total spend $%.4f", self.name, len(todo) - unsent,
                 len(requests) - len(todo), errors - unsent, self.ledger.spend_usd)
        return out  # type: ignore[return-value]

    def _from_cache(self, entry: dict[str, Any]) -> LLMResponse:
        return LLMResponse(text=entry["text"], input_tokens=int(entry.get("input_tokens", 0)),
                           output_tokens=int(entry.get("output_tokens", 0)), cached=True,
                           cost_usd=float(entry.get("cost_usd", 0.0)), latency_s=0.0, finish_reason=entry.get("finish_reason"))

    def _record_hit(self, key: str, resp: LLMResponse) -> None:
        self.ledger.record(LedgerEntry(key, self.cfg.model, resp.input_tokens, resp.output_tokens, resp.cost_usd,
                                       cached=True, latency_s=0.0, failed=False))

    def _execute(self, todo: list[tuple[int, LLMRequest, str]], finish: Finish, max_usd: float | None) -> None:
        """Run the cache misses ``(index, request, key)``; call ``finish(index, key, response)`` for each."""
        raise NotImplementedError


class AsyncAPIGenerator(Generator):
    """Remote APIs: ``cfg.concurrency`` asyncio workers over one official async client.

    Retries, backoff, Retry-After and timeouts are the client's own (max_retries, timeout from cfg). A 200
    whose body is not a usable response (bad JSON, missing fields) is retried once here, because the clients
    do not retry it and it is usually a transient proxy fault; a second bad body becomes the error.
    """

    malformed_retries = 1

    def _make_client(self) -> Any:
        raise NotImplementedError

    async def _call(self, client: Any, request: LLMRequest, key: str) -> LLMResponse:
        raise NotImplementedError

    def _execute(self, todo: list[tuple[int, LLMRequest, str]], finish: Finish, max_usd: float | None) -> None:
        coro_fn = lambda: self._execute_async(todo, finish, max_usd)  # noqa: E731
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run(coro_fn())
            return
        # Called from inside a running event loop (a notebook): run ours on a helper thread.
        box: dict[str, BaseException] = {}

        def target() -> None:
            try:
                asyncio.run(coro_fn())
            except BaseException as e:  # re-raised in the caller's thread
                box["e"] = e

        t = threading.Thread(target=target, name=f"{self.name}-run")
        t.start()
        t.join()
        if "e" in box:
            raise box["e"]

    async def _execute_async(self, todo: list[tuple[int, LLMRequest, str]], finish: Finish, max_usd: float | None) -> None:
        client = self._make_client()
        pending = iter(todo)

        async def worker() -> None:
            for i, req, key in pending:  # one shared iterator: each item goes to exactly one worker
                err = self._budget_error(max_usd)
                resp = LLMResponse("", 0, 0, False, 0.0, 0.0, error=err) if err else await self._call_guarded(client, req, key)
                finish(i, key, resp)

        try:
            await asyncio.gather(*(worker() for _ in range(min(self.cfg.concurrency, len(todo)))))
        finally:
            await client.close()

    async def _call_guarded(self, client: Any, request: LLMRequest, key: str) -> LLMResponse:
        t0 = time.perf_counter()
        for attempt in range(self.malformed_retries + 1):
            try:
                resp = await self._call(client, request, key)
                resp.latency_s = time.perf_counter() - t0
                return resp
            except Exception as e:  # noqa: BLE001 - every failure becomes response.error, never an exception
                if _is_malformed(e) and attempt < self.malformed_retries:
                    log.info("%s: malformed response body (%s); retrying once", self.name, type(e).__name__)
                    continue
                return LLMResponse("", 0, 0, False, 0.0, time.perf_counter() - t0, error=self._describe(e))
        raise AssertionError("unreachable")

    def _describe(self, e: BaseException) -> str:
        """A one-line, key-free error text that says whether retries were spent."""
        names = {c.__name__ for c in type(e).__mro__}
        status = getattr(e, "status_code", None)
        msg = str(e).replace("\n", " ")
        if "APITimeoutError" in names:
            note = f"no response within timeout_s={self.cfg.timeout_s}; gave up after {self.cfg.max_retries} retries"
        elif "APIConnectionError" in names:
            note = f"gave up after {self.cfg.max_retries} retries"
        elif isinstance(status, int):
            retryable = status in (408, 409, 429) or status >= 500
            note = f"gave up after {self.cfg.max_retries} retries" if retryable else "not retryable"
        elif _is_malformed(e):
            note = f"malformed response body; gave up after {self.malformed_retries + 1} attempts"
        else:
            note = "not retried"
        return self._scrub(f"{type(e).__name__}: {msg[:1500]} ({note})")


@functools.cache
def shared_ssl_context() -> Any:
    """One verified SSL context per process (httpx2's defaults, env-aware): building one per client cost
    80-180 ms here (CA bundle parsing), paid on every ``run()`` since each run opens a fresh async client."""
    import httpx2

    return httpx2.create_ssl_context()


def _is_malformed(e: BaseException) -> bool:
    names = {c.__name__ for c in type(e).__mro__}
    return isinstance(e, (MalformedResponse, json.JSONDecodeError)) or "APIResponseValidationError" in names


def make_generator(cfg: GeneratorCfg, cache_dir: str | Path, prices: Mapping[str, PriceCfg] | None = None,
                   model_dir: str | None = None) -> Generator:
    """Build the backend named by ``cfg.backend``; ``model_dir`` overrides where the local model is loaded from."""
    if cfg.backend in ("openai", "openai_compatible"):
        from medssr.llm.openai_backend import OpenAIGenerator

        return OpenAIGenerator(cfg, cache_dir, prices)
    if cfg.backend == "anthropic":
        from medssr.llm.anthropic_backend import AnthropicGenerator

        return AnthropicGenerator(cfg, cache_dir, prices)
    if cfg.backend == "local":
        from medssr.llm.local_backend import LocalGenerator

        return LocalGenerator(cfg, cache_dir, model_dir=model_dir)
    raise LLMError(f"synth.generator.backend: unknown backend {cfg.backend!r} (expected one of {', '.join(BACKENDS)})")
