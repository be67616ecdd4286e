"""Anthropic Messages API through the official ``AsyncAnthropic`` client (its own retries, Retry-After, timeouts).

Structured output is a single forced tool whose ``input_schema`` is the request's schema; the response text is
``json.dumps`` of the tool input. A forced tool and an assistant prefill don't mix, so with a schema the prefix
is not sent; without one it is sent as the trailing assistant turn and prepended to the returned text (models
that don't support prefill answer 400, which becomes that request's error). cfg.temperature is not sent.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medssr.config import GeneratorCfg, PriceCfg
from medssr.llm.base import AsyncAPIGenerator, LLMError, LLMRequest, LLMResponse, MalformedResponse
from medssr.llm.batch import BatchItem, BatchJournal
from medssr.llm.ledger import Ledger

KEY_ENV = "ANTHROPIC_API_KEY"
FIND_WINDOW_S = 600  # a batch found for a journal was created at most this long before it (clock skew)


class AnthropicGenerator(AsyncAPIGenerator):
    schema_overhead_tokens = 400  # the hidden tool-use system prompt: a few hundred tokens (Anthropic's tool-use docs)

    def __init__(self, cfg: GeneratorCfg, cache_dir: str | Path, prices: Mapping[str, PriceCfg] | None = None):
        key = os.environ.get(KEY_ENV, "").strip()
        if not key:
            raise LLMError(f"synth.generator.backend 'anthropic' needs an API key: set the {KEY_ENV} environment variable")
        super().__init__(cfg, cache_dir, Ledger(prices), name=f"anthropic:{cfg.model}", model_id=cfg.model)
        self._api_key = key
        self._add_secret(key)

    def _make_client(self) -> Any:
        from anthropic import AsyncAnthropic, DefaultAsyncHttpxClient

        # An explicit timeout also switches off the client's "streaming required" guess for large max_tokens.
        return AsyncAnthropic(api_key=self._api_key, base_url=self.client_base_url, max_retries=self.cfg.max_retries,
                              timeout=self.cfg.timeout_s, http_client=self._http_client(DefaultAsyncHttpxClient))

    def _structured(self, request: LLMRequest) -> bool:
        return self.cfg.structured and request.json_schema is not None

    def _prefix(self, request: LLMRequest) -> str:
        # The API rejects a final assistant turn that ends in whitespace.
        return "" if self._structured(request) or not request.assistant_prefix else request.assistant_prefix.rstrip()

    def request_body(self, request: LLMRequest) -> dict[str, Any]:
        """The messages.create arguments: system turns joined into ``system``, prefill as a final assistant turn."""
        cfg = self.cfg
        system = "\n\n".join(c for r, c in request.messages if r == "system")
        messages = [{"role": r, "content": c} for r, c in request.messages if r != "system"]
        if prefix := self._prefix(request):
            messages.append({"role": "assistant", "content": prefix})
        # No temperature: anthropic 2.x's messages.create has no such parameter (current models sample at their default).
        body: dict[str, Any] = {"model": cfg.model, "max_tokens": cfg.max_tokens, "messages": messages}
        if system:
            body["system"] = system
        if self._structured(request):
            body["tools"] = [{"name": request.schema_name, "description": f"Record the {request.schema_name} as structured data.",
                              "input_schema": request.json_schema}]
            body["tool_choice"] = {"type": "tool", "name": request.schema_name}
        return body

    async def _call(self, client: Any, request: LLMRequest, key: str) -> LLMResponse:
        return self._from_message(await client.messages.create(**self.request_body(request)), self._prefix(request))

    def _from_message(self, msg: Any, prefix: str, batch: bool = False) -> LLMResponse:
        """An LLMResponse from a Message whose request prefilled ``prefix`` (``batch``: priced at the batch discount)."""
        if isinstance(msg, str):
            raise MalformedResponse(f"response body is not JSON: {msg[:120]!r}")
        try:
            blocks = list(msg.content)
            n_in, n_out = int(msg.usage.input_tokens), int(msg.usage.output_tokens)
            finish = msg.stop_reason
            tool = next((b for b in blocks if b.type == "tool_use"), None)
            if tool is not None:
                text = json.dumps(tool.input, ensure_ascii=False)
            else:
                text = prefix + "".join(b.text for b in blocks if b.type == "text")
        except (AttributeError, TypeError, ValueError) as e:
            raise MalformedResponse(f"message without content blocks/usage ({type(e).__name__}: {e})") from None
        return LLMResponse(text, n_in, n_out, False, self.ledger.cost(self.cfg.model, n_in, n_out, batch=batch), 0.0, finish_reason=finish)

    # -- Message Batches (medssr.llm.batch drives these) ---------------------------------------------------------
    batch_provider = "anthropic"

    async def batch_create(self, client: Any, items: list[tuple[str, LLMRequest]], journal: BatchJournal) -> str:
        """One Message Batch of the requests, custom_id = cache key."""
        journal.prefixes = {key: p for key, req in items if (p := self._prefix(req))}
        journal.save()
        b = await client.messages.batches.create(requests=[{"custom_id": key, "params": self.request_body(req)} for key, req in items])
        return b.id

    async def batch_find(self, client: Any, journal: BatchJournal, taken: set[str]) -> str | None:
        """A batch created for the journal by a run killed before it saved the id: Message Batches carry no
        metadata, so a candidate is one created since the journal (newest first) with as many requests, and
        one that has ended must also hold exactly the journal's custom_ids."""
        want = set(journal.custom_ids)
        async for b in client.messages.batches.list(limit=100):
            if b.created_at.timestamp() < journal.created - FIND_WINDOW_S:
                break
            c = b.request_counts
            if b.id in taken or c.processing + c.succeeded + c.errored + c.canceled + c.expired != len(want):
                continue
            if b.processing_status != "ended":
                return b.id  # cannot be checked yet; collecting it fails any key it does not hold (left a miss)
            if {str(r.custom_id) async for r in await client.messages.batches.results(b.id)} == want:
                return b.id
        return None

    async def batch_poll(self, client: Any, batch_id: str) -> str | None:
        """'ended' once the batch has stopped processing, else None."""
        b = await client.messages.batches.retrieve(batch_id)
        return "ended" if b.processing_status == "ended" else None

    async def batch_results(self, client: Any, batch_id: str, journal: BatchJournal) -> list[BatchItem]:
        """Every item of the results stream: a response, or the failure kind and the provider's message."""
        out: list[BatchItem] = []
        async for row in await client.messages.batches.results(batch_id):
            key, result = str(row.custom_id), row.result
            if result.type == "succeeded":
                try:
                    out.append(BatchItem(key, self._from_message(result.message, journal.prefixes.get(key, ""), batch=True)))
                except MalformedResponse as e:
                    out.append(BatchItem(key, None, "batch_errored", str(e)))
            elif result.type == "errored":
                err = getattr(result.error, "error", None)
                out.append(BatchItem(key, None, "batch_errored", f"{getattr(err, 'type', 'error')}: {getattr(err, 'message', '')}"))
            else:  # canceled, expired
                out.append(BatchItem(key, None, "batch_expired" if result.type == "expired" else "batch_canceled", result.type))
        return out
