"""LLM generator backends (openai, anthropic, openai-compatible/vLLM server, local transformers) behind one
``Generator.run`` with an on-disk response cache and a token/cost ledger."""

from medssr.llm.base import Generator, LLMError, LLMRequest, LLMResponse, chat, make_generator
from medssr.llm.cache import ResponseCache, request_key
from medssr.llm.ledger import Ledger, LedgerEntry

__all__ = ["Generator", "LLMError", "LLMRequest", "LLMResponse", "Ledger", "LedgerEntry", "ResponseCache", "chat",
           "make_generator", "request_key"]
