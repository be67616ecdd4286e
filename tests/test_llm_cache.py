"""The response cache's integrity check: an entry altered on disk is never served, always asked again, counted."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from medssr.config import GeneratorCfg
from medssr.llm import ResponseCache, chat, make_generator
from tests.llm_servers import FakeOpenAIServer


@pytest.fixture
def srv():
    with FakeOpenAIServer() as s:
        yield s


def gen(srv: FakeOpenAIServer, cache: Path):
    cfg = GeneratorCfg(backend="openai_compatible", model="m", base_url=srv.base_url, concurrency=2, max_retries=0, timeout_s=5.0)
    return make_generator(cfg, cache)


def entry_path(g, prompt: str) -> Path:
    return g.cache.path(g.key(chat(prompt)))


def test_entry_altered_into_other_valid_json_is_not_served_but_asked_again(srv, tmp_path, caplog):
    first = gen(srv, tmp_path).run([chat("q1"), chat("q2")], progress=False)
    g = gen(srv, tmp_path)
    p = entry_path(g, "q1")
    entry = json.loads(p.read_text())
    p.write_text(json.dumps({**entry, "text": '{"question": "altered on disk"}'}))  # valid JSON, plausible content
    out = g.run([chat("q1"), chat("q2")], progress=False)
    assert srv.calls("q1") == 2 and srv.calls("q2") == 1
    assert out[0].text == first[0].text and not out[0].cached and out[1].cached
    assert "altered on disk" not in out[0].text
    assert g.ledger.to_dict()["faults"]["cache_corrupt"] == 1
    assert "does not match the content" in caplog.text and str(p) in caplog.text
    assert gen(srv, tmp_path).run([chat("q1")], progress=False)[0].cached  # the re-request rewrote a good entry
    assert srv.calls("q1") == 2


@pytest.mark.parametrize("damage", ["bare dict", "list", "null", "binary", "empty", "wrong types"])
def test_any_damaged_entry_is_a_miss_never_a_crash(srv, tmp_path, damage):
    gen(srv, tmp_path).run([chat("q")], progress=False)
    g = gen(srv, tmp_path)
    p = entry_path(g, "q")
    entry = json.loads(p.read_text())
    blobs = {"bare dict": json.dumps({"text": "hello"}).encode(), "list": b"[1, 2]", "null": b"null", "binary": b"\xff\xfe\x00garbage",
             "empty": b"", "wrong types": json.dumps({**entry, "text": 7}).encode()}
    p.write_bytes(blobs[damage])
    out = g.run([chat("q")], progress=False)
    assert out[0].ok and not out[0].cached and srv.calls("q") == 2
    faults = g.ledger.to_dict()["faults"]
    assert faults["cache_corrupt"] + faults["cache_unverified"] == 1


def test_entry_copied_under_another_key_is_not_served(srv, tmp_path):
    gen(srv, tmp_path).run([chat("a"), chat("b")], progress=False)
    g = gen(srv, tmp_path)
    shutil.copyfile(entry_path(g, "a"), entry_path(g, "b"))  # valid JSON, valid checksum, wrong request
    out = g.run([chat("b")], progress=False)
    assert srv.calls("b") == 2 and "Echo: b" in out[0].text and g.ledger.to_dict()["faults"]["cache_corrupt"] == 1


def test_entry_without_checksum_is_asked_again_and_rewritten_with_one(srv, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    gen(srv, tmp_path).run([chat("old")], progress=False)
    g = gen(srv, tmp_path)
    p = entry_path(g, "old")
    legacy = {k: v for k, v in json.loads(p.read_text()).items() if k != "sha256"}  # what medssr wrote before checksums
    p.write_text(json.dumps(legacy))
    out = g.run([chat("old")], progress=False)
    assert not out[0].cached and srv.calls("old") == 2
    assert g.ledger.to_dict()["faults"] == {**dict.fromkeys(g.ledger.to_dict()["faults"], 0), "cache_unverified": 1}
    assert "no checksum" in caplog.text and "sha256" in json.loads(p.read_text())


def test_put_then_lookup_round_trips_unicode_and_floats(tmp_path):
    cache = ResponseCache(tmp_path)
    key = "cd" + "1" * 62
    value = {"text": "Fièvre — 38.5 °C, ‰ 0.1", "input_tokens": 3, "output_tokens": 4, "cost_usd": 0.1 + 0.2, "finish_reason": None}
    cache.put(key, value)
    got, status = cache.lookup(key)
    assert status == "hit" and {k: got[k] for k in value} == value
    assert cache.stats() == {"hits": 1, "misses": 0, "writes": 1, "corrupt": 0, "unverified": 0}
