"""medssr.llm.ledger: cost from the price table, and budget reservations that hold under threads."""

from __future__ import annotations

import pytest

from medssr.config import PriceCfg
from medssr.llm.ledger import Ledger

PRICES = {"gpt-test": PriceCfg(input_per_mtok=2.0, output_per_mtok=8.0)}


def test_budget_reservation_is_exact_under_threads():
    ledger = Ledger(PRICES)
    admitted: list[bool] = []

    def grab() -> None:
        for _ in range(200):
            admitted.append(ledger.reserve(0.01, max_usd=1.0))

    import threading

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 100 and ledger.reserved_usd == pytest.approx(1.0)


def test_unknown_model_price_warns_once_and_costs_zero(caplog):
    ledger = Ledger({"gpt-4.1": PriceCfg(2.0, 8.0)})
    assert ledger.cost("gpt-4.1", 1_000_000, 1_000_000) == pytest.approx(10.0)
    assert ledger.cost("mystery", 10, 10) == 0.0 and ledger.cost("mystery", 10, 10) == 0.0
    assert caplog.text.count("no price for model 'mystery'") == 1
