"""OpenAI chat completions (``openai``) and OpenAI-compatible servers such as ``vllm serve`` (``openai_compatible``).

Both go through the official ``AsyncOpenAI`` client, whose retry policy we keep: 408/409/429/5xx, timeouts and
connection errors are retried with exponential backoff (0.5 s doubling, 8 s cap) or the server's Retry-After.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medssr.config import GeneratorCfg, PriceCfg
from medssr.llm.base import AsyncAPIGenerator, LLMError, LLMRequest, LLMResponse, MalformedResponse, seed_from_key
from medssr.llm.ledger import Ledger

KEY_ENV = "OPENAI_API_KEY"
NO_KEY = "EMPTY"  # vLLM servers accept any key unless started with --api-key


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
        completion = await client.chat.completions.create(**self.request_body(request, key))
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
        cost = self.ledger.cost(self.cfg.model, n_in, n_out)
        if content is None:
            why = f"model refused: {refusal}" if refusal else f"empty message content (finish_reason={finish})"
            return LLMResponse("", n_in, n_out, False, cost, 0.0, error=self._scrub(why), finish_reason=finish)
        return LLMResponse(content, n_in, n_out, False, cost, 0.0, finish_reason=finish)
