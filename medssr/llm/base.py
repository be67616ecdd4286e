"""Generator interface shared by every LLM backend: request/response types, the cached run loop, make_generator.

A backend only knows how to execute requests that missed the cache; ``Generator.run`` serves hits, writes
each success to the cache the moment it arrives (a killed run loses nothing finished), keeps the ledger and
never raises for a single failed request: the response carries ``error`` instead.

Remote backends reserve each request's worst-case cost in the ledger before sending it (``max_usd`` is a real
cap under concurrency), and count every HTTP request and fault, retried or not, at the transport (the official
clients retry internally and would otherwise hide them). Everything the generator writes (error texts, log
lines, cache entries) goes through :func:`medssr.secrets.scrub_text` with the backend's known secrets.
With ``cfg.batch`` the remote backends send the misses through the provider's batch endpoint instead
(:mod:`medssr.llm.batch`): same cache, same ledger, batch prices.
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
from urllib.parse import unquote, urlsplit, urlunsplit

from medssr.config import GeneratorCfg, PriceCfg
from medssr.errors import MedssrError
from medssr.llm.cache import ResponseCache, request_key
from medssr.llm.ledger import FAULT_KINDS, Ledger, LedgerEntry
from medssr.llm.tokens import offline_tokenizer
from medssr.secrets import scrub_text

log = logging.getLogger("medssr.llm")

ROLES = ("system", "user", "assistant")
BUDGET_ERROR = "budget exhausted"  # prefix of the error for requests never sent because max_usd was reached
BACKENDS = ("openai", "anthropic", "openai_compatible", "local")
BATCH_BACKENDS = ("openai", "anthropic")  # synth.generator.batch: the providers' batch endpoints (medssr.llm.batch)

OnDone = Callable[[int, "LLMResponse"], None]
Finish = Callable[..., None]  # finish(index, key, response, reserved=0.0)

# Worst-case input tokens without the model's tokenizer: byte-level BPE tokens cover at least one UTF-8 byte
# each, so bytes bound the tokens; chat templates add a few tokens per message and per request.
TOKENS_PER_MESSAGE, TOKENS_PER_REQUEST = 8, 16
MIN_SECRET_LEN = 6  # shorter values (a 'user' name) would blank ordinary words; URLs lose their userinfo anyway


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
    schema_overhead_tokens = 0  # tokens a backend adds to the input for structured output, beyond the schema itself

    def __init__(self, cfg: GeneratorCfg, cache_dir: str | Path, ledger: Ledger, name: str, model_id: str):
        self.cfg = cfg
        self.cache = ResponseCache(cache_dir)
        self.ledger = ledger
        self._secrets: list[str] = []
        self.name = scrub_text(name)
        self.model_id = model_id  # what identifies the weights in the cache key
        self.batch_failures: list[dict[str, str]] = []  # batch items the provider failed: custom_id, batch_id, kind, message
        self.count_tokens = offline_tokenizer(cfg.backend, cfg.model)  # the provider's tokenizer where one works offline

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

    def _add_secret(self, value: str | None) -> None:
        if value and len(value) >= MIN_SECRET_LEN and value not in self._secrets:
            self._secrets.append(value)

    def _scrub(self, text: str) -> str:
        return scrub_text(text, secrets=self._secrets)

    # -- budget ------------------------------------------------------------------------------------------
    def worst_case_input_tokens(self, request: LLMRequest) -> int:
        """An upper bound on the request's input tokens (its UTF-8 bytes plus template and schema overhead)."""
        size = self.count_tokens or (lambda text: len(text.encode("utf-8")))
        n = TOKENS_PER_REQUEST + sum(size(c) + TOKENS_PER_MESSAGE for _, c in request.messages)
        n += size(request.assistant_prefix or "")
        if self.cfg.structured and request.json_schema is not None:
            n += len(json.dumps(request.json_schema).encode("utf-8")) + self.schema_overhead_tokens
        return n

    def worst_case_cost(self, request: LLMRequest, batch: bool = False) -> float:
        """USD if the prompt were one token per byte (or its tokenizer count) and the reply ran to max_tokens:
        what a request reserves (``batch``: at the batch price)."""
        return self.ledger.cost(self.cfg.model, self.worst_case_input_tokens(request), self.cfg.max_tokens, batch=batch)

    def _budget_error(self, max_usd: float | None) -> str:
        led = self.ledger
        return (f"{BUDGET_ERROR}: spent ${led.spend_usd:.4f} (+${led.reserved_usd:.4f} reserved for requests in flight) "
                f"of max_usd ${max_usd or 0.0:.4f}; request not sent")

    # -- the run loop -----------------------------------------------------------------------------
    def run(self, requests: Sequence[LLMRequest], on_done: OnDone | None = None, progress: bool = True,
            max_usd: float | None = None) -> list[LLMResponse]:
        """Execute ``requests`` (cache first, then the backend, cfg.concurrency at a time); responses in order.

        ``on_done(index, response)`` is called as each finishes, in the calling thread. Identical requests in
        one call are sent once. ``max_usd`` caps the ledger's spend: a request is sent only while spend plus the
        worst-case cost reserved by those in flight is under it (so at most one request's worst case lands
        beyond it); the rest get a ``budget exhausted`` error and count as ``budget_skipped``.
        """
        from tqdm.auto import tqdm

        requests = list(requests)
        out: list[LLMResponse | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc=self.name, unit="req", disable=not progress, dynamic_ncols=True)
        errors = 0
        counts0 = self.ledger.counts()

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
            else:
                hit, status = self.cache.lookup(k)
                if status in ("corrupt", "unverified"):  # not served: asked again below (the cache warned)
                    self.ledger.fault(f"cache_{status}")
                if hit is not None:
                    served[k] = self._from_cache(hit)
                    self._record_hit(k, served[k])
                    deliver(i, served[k])
                else:
                    groups[k] = [i]

        def finish(i: int, key: str, resp: LLMResponse, reserved: float = 0.0) -> None:
            resp.text = self._scrub(resp.text)  # a server may echo a credential into a 200 as well as into an error
            resp.error = None if resp.error is None else self._scrub(resp.error)
            skipped = resp.error is not None and resp.error.startswith(BUDGET_ERROR)
            if resp.error is None:
                self._cache_put(key, resp)
            elif not skipped:  # unsent requests are counted as budget_skipped, not logged one by one
                log.warning("%s: request %d failed: %s", self.name, i, resp.error)
            if skipped:
                self.ledger.fault("budget_skipped")
                self.ledger.release(reserved)
            else:
                self.ledger.record(LedgerEntry(key, self.cfg.model, resp.input_tokens, resp.output_tokens, resp.cost_usd,
                                               cached=False, latency_s=resp.latency_s, failed=resp.error is not None), reserved=reserved)
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
        counts = self.ledger.counts()
        log.info("%s: %d requests (%s), %d cache hits, %d failed; total spend $%.4f", self.name, len(todo) - unsent,
                 fault_summary(counts, counts0), len(requests) - len(todo), errors - unsent, self.ledger.spend_usd)
        return out  # type: ignore[return-value]

    def _cache_put(self, key: str, resp: LLMResponse) -> None:
        self.cache.put(key, {"text": resp.text, "input_tokens": resp.input_tokens, "output_tokens": resp.output_tokens,
                             "cost_usd": resp.cost_usd, "finish_reason": resp.finish_reason, "generator": self.name})

    def _store(self, key: str, resp: LLMResponse) -> None:
        """Keep a paid answer no request of this run asked for (a batch item collected late): cache and spend."""
        resp.text = self._scrub(resp.text)
        self._cache_put(key, resp)
        self.ledger.record(LedgerEntry(key, self.cfg.model, resp.input_tokens, resp.output_tokens, resp.cost_usd,
                                       cached=False, latency_s=resp.latency_s, failed=False))

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

    Retries, backoff, Retry-After and timeouts are the client's own (max_retries, timeout from cfg); the
    transport under the client counts each HTTP attempt and fault and warns once per retried fault. A 200
    whose body is not a usable response (bad JSON, missing fields) is retried once here, because the clients
    do not retry it and it is usually a transient proxy fault; a second bad body becomes the error.
    """

    malformed_retries = 1

    def __init__(self, cfg: GeneratorCfg, cache_dir: str | Path, ledger: Ledger, name: str, model_id: str):
        super().__init__(cfg, cache_dir, ledger, name, model_id)
        # ``user:pass@`` in base_url: sent as Basic auth by the HTTP client (as before), but kept out of the URL
        # the client logs and puts in its errors.
        self.client_base_url, self._basic_auth = split_userinfo(cfg.base_url)
        if self._basic_auth:
            self._add_secret(self._basic_auth[1])

    def _make_client(self) -> Any:
        raise NotImplementedError

    def _http_client(self, factory: Callable[..., Any]) -> Any:
        """The SDK's default async HTTP client (``factory``) over a counting transport; Basic auth from base_url."""
        import httpx2

        inner = httpx2.AsyncHTTPTransport(verify=shared_ssl_context(), limits=httpx2.Limits(**HTTP_LIMITS))
        return factory(transport=_CountingTransport(inner, self), auth=self._basic_auth)

    async def _call(self, client: Any, request: LLMRequest, key: str) -> LLMResponse:
        raise NotImplementedError

    def _execute(self, todo: list[tuple[int, LLMRequest, str]], finish: Finish, max_usd: float | None) -> None:
        if self.cfg.batch:
            from medssr.llm.batch import execute_batch

            coro_fn = lambda: execute_batch(self, todo, finish, max_usd)  # noqa: E731
        else:
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
        settled = asyncio.Condition()
        in_flight = 0

        async def admit(req: LLMRequest) -> float | None:
            """Reserve the request's worst case; while the cap is held by requests in flight, wait for them to
            settle (their true cost is usually far below the worst case). None: the cap is reached by spend."""
            nonlocal in_flight
            worst = self.worst_case_cost(req)
            async with settled:
                while not self.ledger.reserve(worst, max_usd):
                    if in_flight == 0:
                        return None
                    await settled.wait()
                in_flight += 1
            return worst

        async def worker() -> None:
            nonlocal in_flight
            for i, req, key in pending:  # one shared iterator: each item goes to exactly one worker
                reserved = await admit(req)
                if reserved is None:
                    finish(i, key, LLMResponse("", 0, 0, False, 0.0, 0.0, error=self._budget_error(max_usd)))
                    continue
                try:
                    resp = await self._call_guarded(client, req, key)
                    finish(i, key, resp, reserved=reserved)
                finally:
                    async with settled:
                        in_flight -= 1
                        settled.notify_all()

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
                if _is_malformed(e):
                    self.ledger.fault("malformed_body")
                    if attempt < self.malformed_retries:
                        self.ledger.retried()
                        log.warning("%s: malformed_body fault (%s); retrying (%d of %d)", self.name,
                                    self._scrub(f"{type(e).__name__}: {str(e)[:200]}").replace("\n", " "), attempt + 1,
                                    self.malformed_retries)
                        continue
                return LLMResponse("", 0, 0, False, 0.0, time.perf_counter() - t0, error=self._describe(e))
        raise AssertionError("unreachable")

    def _http_fault(self, kind: str, detail: str, attempt: int, status: int | None, should_retry: str | None) -> None:
        """Count one fault seen at the transport; warn (one line) when the client is going to retry it."""
        self.ledger.fault(kind)
        if should_retry in ("true", "false"):
            retryable = should_retry == "true"
        else:
            retryable = kind in RETRIED_FAULTS or status in (408, 409)
        if retryable and attempt < self.cfg.max_retries:
            log.warning("%s: %s fault (%s); the client retries (%d of %d)", self.name, kind, self._scrub(detail),
                        attempt + 1, self.cfg.max_retries)

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


HTTP_LIMITS = {"max_connections": 1000, "max_keepalive_connections": 100}  # the openai/anthropic SDKs' defaults
RETRIED_FAULTS = ("rate_limit", "server_error", "timeout", "connection", "malformed_body")  # what the clients retry


def status_fault(status: int) -> str | None:
    """The fault kind of an HTTP status (None for success and redirects)."""
    if status == 429:
        return "rate_limit"
    if status == 408:
        return "timeout"
    if status >= 500:
        return "server_error"
    if status >= 400:
        return "client_error"
    return None


class _CountingTransport:  # duck-typed httpx2.AsyncBaseTransport (importing httpx2 here would slow every import)
    """Wraps the HTTP client's transport: one ledger count per HTTP request that reached the server (retries
    included, told apart by the SDKs' ``x-stainless-retry-count`` header) and one per fault, by kind. A body
    cut mid-stream surfaces while the client reads it, so the response stream is wrapped too."""

    def __init__(self, inner: Any, gen: AsyncAPIGenerator):
        self.inner, self.gen = inner, gen

    async def handle_async_request(self, request: Any) -> Any:
        import httpx2

        try:
            attempt = int(request.headers.get("x-stainless-retry-count") or 0)
        except ValueError:
            attempt = 0
        where = f"{request.method} {request.url.path}"
        try:
            response = await self.inner.handle_async_request(request)
        except (httpx2.ConnectError, httpx2.ConnectTimeout) as e:  # never reached the server: not an HTTP request
            self.gen._http_fault("connection", f"{type(e).__name__} on {where}: {e}", attempt, None, None)
            raise
        except httpx2.TimeoutException as e:
            self.gen.ledger.http_request(retry=attempt > 0)
            self.gen._http_fault("timeout", f"{type(e).__name__} on {where} (timeout_s={self.gen.cfg.timeout_s})", attempt, None, None)
            raise
        except httpx2.TransportError as e:
            self.gen.ledger.http_request(retry=attempt > 0)
            self.gen._http_fault("connection", f"{type(e).__name__} on {where}: {e}", attempt, None, None)
            raise
        self.gen.ledger.http_request(retry=attempt > 0)
        if (kind := status_fault(response.status_code)) is not None:
            self.gen._http_fault(kind, f"HTTP {response.status_code} on {where}", attempt, response.status_code,
                                 response.headers.get("x-should-retry"))
        else:
            response.stream = _make_counting_stream(response.stream, self.gen, where, attempt)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def __aenter__(self) -> _CountingTransport:
        await self.inner.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.inner.__aexit__(*exc)


def _make_counting_stream(inner: Any, gen: AsyncAPIGenerator, where: str, attempt: int) -> Any:
    import httpx2

    class _CountingStream(httpx2.AsyncByteStream):
        """A 200 body that breaks off while being read is a malformed_body fault (a slow one is a timeout)."""

        async def __aiter__(self):  # type: ignore[override]
            try:
                async for chunk in inner:
                    yield chunk
            except httpx2.TimeoutException as e:
                gen._http_fault("timeout", f"{type(e).__name__} reading the body of {where}", attempt, None, None)
                raise
            except httpx2.TransportError as e:
                gen._http_fault("malformed_body", f"body cut off ({type(e).__name__}: {e}) on {where}", attempt, None, None)
                raise

        async def aclose(self) -> None:
            await inner.aclose()

    return _CountingStream()


def split_userinfo(url: str | None) -> tuple[str | None, tuple[str, str] | None]:
    """``url`` without ``user:pass@`` and the (user, password) pair it carried, if any (percent-decoded)."""
    if not url:
        return url, None
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment)), (unquote(user), unquote(password))


def fault_summary(counts: Mapping[str, Any], before: Mapping[str, Any] | None = None) -> str:
    """'49 HTTP requests, 17 retries; faults: rate_limit 5, timeout 2' from ledger counts (minus ``before``)."""
    d = diff_counts(counts, before) if before else counts
    faults = ", ".join(f"{k} {v}" for k, v in d["faults"].items() if v) or "none"
    return f"{d['http_requests']} HTTP requests, {d['retries']} retries; faults: {faults}"


def diff_counts(after: Mapping[str, Any], before: Mapping[str, Any]) -> dict[str, Any]:
    """Ledger counts of one run: ``after - before`` (see Ledger.counts)."""
    return {"requests": after["requests"] - before["requests"], "http_requests": after["http_requests"] - before["http_requests"],
            "retries": after["retries"] - before["retries"],
            "faults": {k: after["faults"].get(k, 0) - before["faults"].get(k, 0) for k in FAULT_KINDS}}


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
    if cfg.batch and cfg.backend not in BATCH_BACKENDS:
        raise LLMError(f"synth.generator.batch: true needs backend {' or '.join(BATCH_BACKENDS)} (their batch endpoints); "
                       f"backend {cfg.backend!r} has none (vLLM and other OpenAI-compatible servers do not serve /v1/batches): "
                       "set synth.generator.batch: false")
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
