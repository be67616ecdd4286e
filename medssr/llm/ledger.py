"""Token and cost ledger: what each generator request used and cost, the faults met on the way, and the budget.

Spend counts only requests actually made; cache hits are recorded (with the cost they originally had) as
``saved_usd`` so a report can show what the cache saved. ``requests`` are logical requests; ``http_requests``
is what the server received, retries included, and ``faults`` counts every retried or final fault by kind.
The budget reserves each request's worst-case cost before it is sent (:meth:`Ledger.reserve`) and settles it
to the true cost when the answer arrives, so concurrent requests cannot jointly overshoot ``max_usd``.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from medssr.config import PriceCfg

log = logging.getLogger("medssr.llm")

# Every kind a report, MLflow (``synth/faults/<kind>``) and the summary line may show; always logged, 0 when none.
FAULT_KINDS = (
    "rate_limit",        # HTTP 429
    "server_error",      # HTTP 5xx
    "timeout",           # no (complete) answer within timeout_s, or HTTP 408
    "connection",        # connection refused, reset or closed before any answer
    "malformed_body",    # a 200 that is not a usable response: invalid JSON, cut mid-body, empty choices, garbage
    "client_error",      # other HTTP 4xx (401, 400, 409, ...): retried only when the server asks for it
    "budget_skipped",    # not sent: max_usd reached (reservations included)
    "cache_corrupt",     # a cache entry unreadable or failing its checksum: not served, asked again
    "cache_unverified",  # a cache entry without a checksum (older medssr): not served, asked again
    "batch_errored",     # a batch item the provider answered with an error (left a miss: the next run retries it)
    "batch_expired",     # a batch item not processed within the completion window (left a miss)
    "batch_canceled",    # a batch item canceled with its batch (left a miss)
)


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
        self.http_requests = self.retries = 0
        self.faults: Counter[str] = Counter()
        self.input_tokens = self.output_tokens = 0
        self.cached_input_tokens = self.cached_output_tokens = 0
        self.spend_usd = self.saved_usd = 0.0
        self.reserved_usd = 0.0  # worst-case cost of the requests in flight
        self.latency_s = 0.0

    def cost(self, model: str, input_tokens: int, output_tokens: int, batch: bool = False) -> float:
        """USD for one call from the price table (``batch``: at the batch endpoints' ``batch_discount``); an
        unknown model costs 0 and warns once."""
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
        usd = (input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok) / 1e6
        return usd * price.batch_discount if batch else usd

    # -- budget ---------------------------------------------------------------------------------------------
    def reserve(self, usd: float, max_usd: float | None) -> bool:
        """Hold ``usd`` (a request's worst case) if spend plus what is already held is still under ``max_usd``.

        Admitting while under the cap (not only when the whole worst case fits) is today's single-request
        semantics made safe under concurrency: at most one request's worst case lands beyond ``max_usd``.
        """
        with self._lock:
            if max_usd is not None and self.spend_usd + self.reserved_usd >= max_usd:
                return False
            self.reserved_usd += usd
            return True

    def release(self, usd: float) -> None:
        """Give back a reservation whose request was never made."""
        with self._lock:
            self.reserved_usd = max(0.0, self.reserved_usd - usd)

    # -- counts ---------------------------------------------------------------------------------------------
    def fault(self, kind: str, n: int = 1) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r} (expected one of {', '.join(FAULT_KINDS)})")
        with self._lock:
            self.faults[kind] += n

    def http_request(self, retry: bool) -> None:
        """One HTTP request reached the server (``retry``: it repeats an earlier attempt of the same request)."""
        with self._lock:
            self.http_requests += 1
            self.retries += int(retry)

    def retried(self) -> None:
        """A retry made outside the HTTP client (a malformed body asked again)."""
        with self._lock:
            self.retries += 1

    def record(self, entry: LedgerEntry, reserved: float = 0.0) -> None:
        """Add one request; ``reserved`` is its reservation, released in the same step (spend never double-counts)."""
        with self._lock:
            self.reserved_usd = max(0.0, self.reserved_usd - reserved)
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

    def counts(self) -> dict[str, Any]:
        """The counters a stage diffs before/after a run: requests, http_requests, retries, faults by kind."""
        with self._lock:
            return {"requests": self.requests, "http_requests": self.http_requests, "retries": self.retries,
                    "faults": {k: self.faults[k] for k in FAULT_KINDS}}

    def to_dict(self, entries: bool = False) -> dict[str, Any]:
        """Totals for reports and MLflow (``entries=True`` adds the per-request list)."""
        counts = self.counts()
        with self._lock:
            out: dict[str, Any] = {
                "requests": self.requests,
                "http_requests": counts["http_requests"],
                "retries": counts["retries"],
                "faults": counts["faults"],
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
