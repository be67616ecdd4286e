"""OpenAI chat completions (``openai``) and OpenAI-compatible servers such as ``vllm serve`` (``openai_compatible``).

Both go through the official ``AsyncOpenAI`` client, whose retry policy we keep: 408/409/429/5xx, timeouts and
connection errors are retried with exponential backoff (0.5 s doubling, 8 s cap) or the server's Retry-After.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medssr.config import GeneratorCfg, PriceCfg
from medssr.llm.base import AsyncAPIGenerator, LLMError, LLMRequest, LLMResponse, MalformedResponse, seed_from_key
from medssr.llm.batch import BATCH_WHOLE, BatchItem, BatchJournal
from medssr.llm.ledger import Ledger

KEY_ENV = "OPENAI_API_KEY"
NO_KEY = "EMPTY"
BATCH_ENDPOINT = "/v1/chat/completions"
BATCH_FINAL = ("completed", "failed", "expired", "cancelled")
FIND_WINDOW_S = 600  # a batch found for a journal was created at most this long before it (clock skew)  # vLLM servers accept any key unless started with --api-key


class OpenAIGenerator(AsyncAPIGenerator):
    def __init__(self, cfg: GeneratorCfg, cache_dir: str | Path, prices: Mapping[str, PriceCfg] | None = None):
        key = os.environ.get(KEY_ENV, "").strip()
        if cfg.backend == "openai" and not key:
            raise LLMError(f"synth.generator.backend 'openai' needs an API key: set the {KEY_ENV} environment variable")
        if cfg.backend == "openai_compatible" and not cfg.base_url:
            raise LLMError("synth.generator.base_url is required for backend 'openai_compatible' (e.g. http://127.0.0.1:8000/v1 for vllm serve)")
        super().__init__(cfg, cache_dir, Ledger(prices), name=f"{cfg.backend}:{cfg.model}", model_id=cfg.model)
        self._api_key = key or NO_KEY
        self._add_secret(key)

    def _make_client(self) -> Any:
        from openai import AsyncOpenAI, DefaultAsyncHttpxClient

        return AsyncOpenAI(api_key=self._api_key, base_url=self.client_base_url, max_retries=self.cfg.max_retries,
                           timeout=self.cfg.timeout_s, http_client=self._http_client(DefaultAsyncHttpxClient))

    def request_body(self, request: LLMRequest, key: str) -> dict[str, Any]:
        """The chat.completions arguments for one request (assistant_prefix is not supported by the API: ignored)."""
        cfg = self.cfg
        body: dict[str, Any] = {"model": cfg.model, "temperature": cfg.temperature,
                                "messages": [{"role": r, "content": c} for r, c in request.messages]}
        if cfg.backend == "openai":
            body["max_completion_tokens"] = cfg.max_tokens
        else:  # older vLLM/TGI servers know only max_tokens; vLLM honours a per-request seed
            body["max_tokens"] = cfg.max_tokens
            body["seed"] = seed_from_key(key)
        if cfg.structured and request.json_schema is not None:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": request.schema_name, "schema": request.json_schema, "strict": True}}
        return body

    async def _call(self, client: Any, request: LLMRequest, key: str) -> LLMResponse:
        return self._from_completion(await client.chat.completions.create(**self.request_body(request, key)))

    def _from_completion(self, completion: Any, batch: bool = False) -> LLMResponse:
        """An LLMResponse from a ChatCompletion (``batch``: priced at the batch discount)."""
        if isinstance(completion, str):  # the client hands back raw text when the body was not JSON
            raise MalformedResponse(f"response body is not JSON: {completion[:120]!r}")
        try:
            choice = completion.choices[0]
            content = choice.message.content
            refusal = getattr(choice.message, "refusal", None)
            finish = choice.finish_reason
            usage = completion.usage
            n_in = int(usage.prompt_tokens) if usage is not None else 0
            n_out = int(usage.completion_tokens) if usage is not None else 0
        except (AttributeError, IndexError, TypeError, ValueError) as e:
            raise MalformedResponse(f"chat completion without choices[0].message/usage ({type(e).__name__}: {e})") from None
        cost = self.ledger.cost(self.cfg.model, n_in, n_out, batch=batch)
        if content is None:
            why = f"model refused: {refusal}" if refusal else f"empty message content (finish_reason={finish})"
            return LLMResponse("", n_in, n_out, False, cost, 0.0, error=self._scrub(why), finish_reason=finish)
        return LLMResponse(content, n_in, n_out, False, cost, 0.0, finish_reason=finish)

    # -- OpenAI Batch API (medssr.llm.batch drives these) -------------------------------------------------------
    batch_provider = "openai"

    async def batch_create(self, client: Any, items: list[tuple[str, LLMRequest]], journal: BatchJournal) -> str:
        """Upload the JSONL of chat-completions requests (custom_id = cache key), then create the batch on it.
        The file id is journaled before the create, so a kill in between finds the batch again by its file."""
        lines = [json.dumps({"custom_id": key, "method": "POST", "url": BATCH_ENDPOINT, "body": self.request_body(req, key)},
                            ensure_ascii=False) for key, req in items]
        if journal.input_file_id is None:
            f = await client.files.create(file=(f"medssr-{journal.id}.jsonl", ("\n".join(lines) + "\n").encode("utf-8")), purpose="batch")
            journal.input_file_id = f.id
            journal.save()
        else:  # resuming a create that was cut off: the batch may exist already
            found = await self.batch_find(client, journal, set())
            if found is not None:
                return found
        b = await client.batches.create(input_file_id=journal.input_file_id, endpoint=BATCH_ENDPOINT, completion_window="24h",
                                        metadata={"medssr_journal": journal.id})
        return b.id

    async def batch_find(self, client: Any, journal: BatchJournal, taken: set[str]) -> str | None:
        """The batch created on the journal's uploaded file (the most recent one), if any."""
        if journal.input_file_id is None:  # killed before the upload finished: no batch can exist
            return None
        async for b in client.batches.list(limit=100):
            if b.input_file_id == journal.input_file_id and b.id not in taken:
                return b.id
            if b.created_at < journal.created - FIND_WINDOW_S:  # newest first: older ones cannot be ours
                break
        return None

    async def batch_poll(self, client: Any, batch_id: str) -> str | None:
        """The batch's final status (completed, failed, expired, cancelled), or None while it runs."""
        b = await client.batches.retrieve(batch_id)
        return b.status if b.status in BATCH_FINAL else None

    async def batch_results(self, client: Any, batch_id: str, journal: BatchJournal) -> list[BatchItem]:
        """Every item of the output and error files: a response, or the failure kind and the provider's message."""
        from openai.types.chat import ChatCompletion

        b = await client.batches.retrieve(batch_id)
        out: list[BatchItem] = []
        for file_id in (b.output_file_id, b.error_file_id):
            if not file_id:
                continue
            content = await client.files.content(file_id)
            for line in content.text.splitlines():
                if not line.strip():
                    continue
                row = json.loads(line)
                key = str(row.get("custom_id"))
                resp, err = row.get("response") or {}, row.get("error") or {}
                status = resp.get("status_code")
                if status == 200 and not err:
                    try:
                        out.append(BatchItem(key, self._from_completion(ChatCompletion.model_validate(resp.get("body")), batch=True)))
                    except (MalformedResponse, ValueError) as e:
                        out.append(BatchItem(key, None, "batch_errored", f"malformed batch output line: {str(e)[:300]}"))
                    continue
                code = str(err.get("code") or "")
                body_err = (resp.get("body") or {}).get("error") or {} if isinstance(resp.get("body"), dict) else {}
                msg = err.get("message") or body_err.get("message") or f"HTTP {status}"
                kind = "batch_expired" if code == "batch_expired" else "batch_canceled" if code == "batch_cancelled" else "batch_errored"
                out.append(BatchItem(key, None, kind, f"{code or status}: {msg}"))
        if b.status in ("failed", "expired", "cancelled") and not out:
            errs = "; ".join(f"{e.code}: {e.message}" for e in (getattr(b.errors, "data", None) or []))
            kind = {"expired": "batch_expired", "cancelled": "batch_canceled"}.get(b.status, "batch_errored")
            return [BatchItem(BATCH_WHOLE, None, kind, f"batch {b.status}" + (f": {errs}" if errs else ""))]
        return out
