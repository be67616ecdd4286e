"""Token and cost ledger: what each generator request used and cost, with totals for reports and budgets.

Spend counts only requests actually made; cache hits are recorded (with the cost they originally had) as
``saved_usd`` so a report can show what the cache saved.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from medssr.config import PriceCfg

log = logging.getLogger("medssr.llm")


@dataclass(frozen=True)
class LedgerEntry:
    """One request as the ledger saw it."""

    key: str
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    cached: bool
    latency_s: float
    failed: bool


class Ledger:
    """Thread-safe per-request usage log with running totals; prices are per million tokens, keyed by model."""

    def __init__(self, prices: Mapping[str, PriceCfg] | None = None, free: bool = False):
        self.prices = dict(prices or {})
        self.free = free  # local models: cost 0 without an unknown-price warning
        self.entries: list[LedgerEntry] = []
        self._lock = threading.Lock()
        self._warned: set[str] = set()
        self.requests = self.cache_hits = self.failures = 0
        self.input_tokens = self.output_tokens = 0
        self.cached_input_tokens = self.cached_output_tokens = 0
        self.spend_usd = self.saved_usd = 0.0
        self.latency_s = 0.0

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> float:
        """USD for one call from the price table; an unknown model costs 0 and warns once."""
        if self.free:
            return 0.0
        price = self.prices.get(model)
        if price is None:
            with self._lock:
                first = model not in self._warned
                self._warned.add(model)
            if first:
                log.warning("no price for model %r in synth.prices: its spend is counted as $0", model)
            return 0.0
        return (input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok) / 1e6

    def record(self, entry: LedgerEntry) -> None:
        with self._lock:
            self.entries.append(entry)
            if entry.cached:
                self.cache_hits += 1
                self.cached_input_tokens += entry.input_tokens
                self.cached_output_tokens += entry.output_tokens
                self.saved_usd += entry.cost_usd
                return
            self.requests += 1
            self.failures += int(entry.failed)
            self.input_tokens += entry.input_tokens
            self.output_tokens += entry.output_tokens
            self.spend_usd += entry.cost_usd
            self.latency_s += entry.latency_s

    def to_dict(self, entries: bool = False) -> dict[str, Any]:
        """Totals for reports and MLflow (``entries=True`` adds the per-request list)."""
        with self._lock:
            out: dict[str, Any] = {
                "requests": self.requests,
                "cache_hits": self.cache_hits,
                "failures": self.failures,
                "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens,
                "spend_usd": round(self.spend_usd, 6),
                "cached_input_tokens": self.cached_input_tokens,
                "cached_output_tokens": self.cached_output_tokens,
                "saved_usd": round(self.saved_usd, 6),
                "mean_latency_s": round(self.latency_s / self.requests, 4) if self.requests else 0.0,
            }
            if entries:
                out["entries"] = [asdict(e) for e in self.entries]
        return out
