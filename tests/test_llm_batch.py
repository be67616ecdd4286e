"""Requests through the providers' batch endpoints (medssr.llm.batch): the official clients against loopback
servers that speak the OpenAI Batch API and Anthropic Message Batches (#17.3)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medssr.config import GeneratorCfg, PriceCfg
from medssr.llm import LLMError, chat, make_generator
from medssr.llm.batch import JOURNAL_SUFFIX, journal_dir
from medssr.llm.tokens import offline_tokenizer, tokenizer_name
from tests.llm_servers import FakeAnthropicServer, FakeOpenAIServer, count_tokens, server_error

ROOT = Path(__file__).resolve().parents[1]
CANARY = "sk-canary-batch-5e1f0c7a9d"
ANTHROPIC_CANARY = "sk-ant-canary-batch-3b8e2d"
PRICES = {"gpt-test": PriceCfg(input_per_mtok=2.0, output_per_mtok=8.0, batch_discount=0.5),
          "claude-test": PriceCfg(input_per_mtok=3.0, output_per_mtok=15.0, batch_discount=0.5)}
SCHEMA = {"type": "object", "properties": {"question": {"type": "string"}}, "required": ["question"], "additionalProperties": False}


@pytest.fixture(autouse=True)
def keys(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_CANARY)


def gen_for(srv, cache: Path, batch: bool = True, **kw):
    backend, model = ("openai", "gpt-test") if isinstance(srv, FakeOpenAIServer) else ("anthropic", "claude-test")
    cfg = GeneratorCfg(**{"backend": backend, "model": model, "base_url": srv.base_url, "concurrency": 3, "max_retries": 2,
                          "timeout_s": 5.0, "batch": batch, "batch_poll_s": 0.05, **kw})
    return make_generator(cfg, cache, prices=PRICES)


def prompts(n: int, **kw) -> list:
    return [chat(f"prompt number {i} about fever", **kw) for i in range(n)]


def journals(cache: Path) -> list[Path]:
    return sorted(journal_dir(cache).glob(f"*{JOURNAL_SUFFIX}"))


# -- same answers as the synchronous path, at the batch price -----------------------------------------------------
@pytest.mark.parametrize("server", [FakeOpenAIServer, FakeAnthropicServer])
@pytest.mark.parametrize("structured", [True, False])
def test_batch_gives_the_synchronous_answers_at_the_batch_price(tmp_path, server, structured):
    kw = {"json_schema": SCHEMA} if structured else {"assistant_prefix": "Question:"}
    with server(batch_polls=3) as srv:
        sync = gen_for(srv, tmp_path / "sync", batch=False, structured=structured).run(prompts(5, **kw), progress=False)
        gen = gen_for(srv, tmp_path / "batch", structured=structured)
        out = gen.run(prompts(5, **kw), progress=False)
        assert srv.batch_creates == 1 and len(srv.batch_items) == 5 and srv.batch_polls_seen >= 3
    assert [r.text for r in out] == [r.text for r in sync] and all(r.ok for r in out)
    assert [(r.input_tokens, r.output_tokens) for r in out] == [(r.input_tokens, r.output_tokens) for r in sync]
    assert [r.cost_usd for r in out] == pytest.approx([r.cost_usd / 2 for r in sync])
    assert gen.ledger.spend_usd == pytest.approx(sum(r.cost_usd for r in sync) / 2)
    assert gen.ledger.requests == 5 and journals(tmp_path / "batch") == []


def test_openai_batch_input_is_one_jsonl_line_per_request_keyed_by_the_cache_key(tmp_path):
    with FakeOpenAIServer() as srv:
        gen = gen_for(srv, tmp_path / "c")
        reqs = prompts(3, json_schema=SCHEMA)
        gen.run(reqs, progress=False)
        upload = next(r for r in srv.requests if r.path == "/v1/files")
        create = next(r for r in srv.requests if r.path == "/v1/batches")
    assert 'name="purpose"' in upload.raw and "batch" in upload.raw
    assert create.body["endpoint"] == "/v1/chat/completions" and create.body["completion_window"] == "24h"
    items = srv.batch_items
    assert [json.loads(i.raw)["model"] for i in items] == ["gpt-test"] * 3
    lines = [json.loads(line) for line in srv.files[create.body["input_file_id"]].decode().splitlines()]
    assert [row["custom_id"] for row in lines] == [gen.key(r) for r in reqs]
    assert {row["url"] for row in lines} == {"/v1/chat/completions"} and {row["method"] for row in lines} == {"POST"}


def test_batch_answers_are_cached_so_a_second_run_sends_nothing(tmp_path):
    with FakeAnthropicServer() as srv:
        gen_for(srv, tmp_path / "c").run(prompts(4), progress=False)
        n = len(srv.requests)
        gen = gen_for(srv, tmp_path / "c")
        out = gen.run(prompts(4), progress=False)
        assert len(srv.requests) == n and srv.batch_creates == 1
    assert all(r.cached for r in out) and gen.ledger.cache_hits == 4 and gen.ledger.spend_usd == 0


# -- failed items ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("server", [FakeOpenAIServer, FakeAnthropicServer])
def test_errored_and_expired_items_are_counted_listed_and_retried_in_a_new_batch_on_rerun(tmp_path, server, caplog):
    first = {"errored": True, "expired": True}

    def rule(req):
        for kind in ("errored", "expired"):
            if f"number {('1' if kind == 'errored' else '3')} " in req.last_user and first[kind]:
                first[kind] = False
                return kind
        return None

    with server(batch_rule=rule, batch_error="Invalid request (key {authorization}{x-api-key})") as srv:
        gen = gen_for(srv, tmp_path / "c")
        with caplog.at_level(logging.INFO, logger="medssr.llm"):
            out = gen.run(prompts(5), progress=False)
        assert [r.ok for r in out] == [True, False, True, False, True]
        assert out[1].error.startswith("batch_errored") and out[3].error.startswith("batch_expired")
        faults = gen.ledger.counts()["faults"]
        assert faults["batch_errored"] == 1 and faults["batch_expired"] == 1
        failures = gen.batch_failures
        assert [(f["custom_id"], f["kind"]) for f in failures] == [(gen.key(prompts(5)[1]), "batch_errored"),
                                                                   (gen.key(prompts(5)[3]), "batch_expired")]
        assert "Invalid request" in failures[0]["message"] and failures[0]["batch_id"]
        # the rerun sends only the two failed items, in a new batch
        gen2 = gen_for(srv, tmp_path / "c")
        out2 = gen2.run(prompts(5), progress=False)
        assert all(r.ok for r in out2) and srv.batch_creates == 2 and len(srv.batch_items) == 7
        assert gen2.ledger.cache_hits == 3 and gen2.ledger.requests == 2
    blob = json.dumps(failures) + caplog.text + "".join(r.error or "" for r in out) + _all_text(tmp_path)
    assert CANARY not in blob and ANTHROPIC_CANARY not in blob and "Invalid request (key" in blob


def test_a_poll_that_fails_after_retries_keeps_the_journal_and_the_rerun_collects_the_same_batch(tmp_path):
    with FakeOpenAIServer(batch_polls=2) as srv:
        srv.script(None, None, server_error(), server_error(), server_error())  # upload, create, then every poll attempt fails
        gen = gen_for(srv, tmp_path / "c")
        out = gen.run(prompts(3), progress=False)
        assert not any(r.ok for r in out) and "not collected" in out[0].error and "rerun" in out[0].error
        assert len(journals(tmp_path / "c")) == 1 and len(cache_entries(tmp_path / "c")) == 0
        gen2 = gen_for(srv, tmp_path / "c")
        out2 = gen2.run(prompts(3), progress=False)
        assert all(r.ok for r in out2) and srv.batch_creates == 1 and journals(tmp_path / "c") == []


def cache_entries(cache: Path) -> list[Path]:
    return list(cache.glob("*/*.json"))


def test_a_batch_that_fails_as_a_whole_fails_each_item_with_the_provider_message_and_the_rerun_resubmits(tmp_path):
    with FakeOpenAIServer() as srv:
        srv.batch_fails = 1
        gen = gen_for(srv, tmp_path / "c")
        out = gen.run(prompts(3), progress=False)
        assert not any(r.ok for r in out) and "Injected validation failure" in out[0].error
        assert gen.ledger.counts()["faults"]["batch_errored"] == 3 and len(gen.batch_failures) == 3
        assert journals(tmp_path / "c") == [] and gen.ledger.spend_usd == 0
        out2 = gen_for(srv, tmp_path / "c").run(prompts(3), progress=False)
        assert all(r.ok for r in out2) and srv.batch_creates == 2


# -- a kill between create and collect ---------------------------------------------------------------------------------
CHILD = """
import sys
from medssr.config import GeneratorCfg, PriceCfg
from medssr.llm import chat, make_generator
cfg = GeneratorCfg(backend=sys.argv[1], model=sys.argv[2], base_url=sys.argv[3], batch=True, batch_poll_s=0.05, max_retries=2)
gen = make_generator(cfg, sys.argv[4], prices={sys.argv[2]: PriceCfg(2.0, 8.0, 0.5)})
gen.run([chat(f"prompt number {i} about fever") for i in range(int(sys.argv[5]))], progress=False)
print("collected", flush=True)
"""


@pytest.mark.parametrize("server", [FakeOpenAIServer, FakeAnthropicServer])
def test_sigkill_between_create_and_collect_then_rerun_polls_the_same_batch_without_resubmitting(tmp_path, server):
    n = 6
    with server(batch_polls=10**9) as srv:  # the batch never ends while the first process lives
        backend, model = ("openai", "gpt-test") if server is FakeOpenAIServer else ("anthropic", "claude-test")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        child = subprocess.Popen([sys.executable, "-c", CHILD, backend, model, srv.base_url, str(tmp_path / "c"), str(n)],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
        deadline = time.time() + 90
        while (srv.batch_polls_seen < 2 or not journals(tmp_path / "c")) and child.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        log = child.stdout.read()
        child.stdout.close()
        assert child.returncode == -signal.SIGKILL, log
        assert srv.batch_creates == 1 and len(journals(tmp_path / "c")) == 1
        journal = json.loads(journals(tmp_path / "c")[0].read_text())
        srv.batch_polls = 0  # the provider finishes the batch meanwhile
        gen = gen_for(srv, tmp_path / "c")
        out = gen.run(prompts(n), progress=False)
        assert srv.batch_creates == 1  # polled and collected, never submitted again
        assert journal["batch_id"] in {r.path.rsplit("/", 1)[-1] for r in srv.requests if "batches/" in r.path}
        assert sorted(journal["custom_ids"]) == sorted(gen.key(r) for r in prompts(n))
    assert all(r.ok for r in out) and journals(tmp_path / "c") == []
    assert gen.ledger.requests == n and gen.ledger.spend_usd == pytest.approx(sum(r.cost_usd for r in out))
    assert CANARY not in _all_text(tmp_path) and CANARY not in log and ANTHROPIC_CANARY not in log


def _die_in_create(server, after: bool):
    """Make the backend's batch_create raise KeyboardInterrupt right after (or instead of) the provider's create:
    a kill after the create returned but before its id was journaled (or before the create was sent)."""
    import medssr.llm.anthropic_backend as ab
    import medssr.llm.openai_backend as ob

    cls = ob.OpenAIGenerator if server is FakeOpenAIServer else ab.AnthropicGenerator
    real = cls.batch_create

    async def die(self, client, items, journal):
        if after:
            await real(self, client, items, journal)
        raise KeyboardInterrupt

    return cls, real, die


@pytest.mark.parametrize("server", [FakeOpenAIServer, FakeAnthropicServer])
def test_a_kill_after_the_create_but_before_its_id_was_journaled_finds_the_batch_at_the_provider(tmp_path, server):
    with server() as srv:
        gen_for(srv, tmp_path / "c").run(prompts(2), progress=False)  # an earlier, complete batch
        srv.batch_polls = 10**9
        cls, real, die = _die_in_create(server, after=True)
        cls.batch_create = die
        try:
            with pytest.raises(KeyboardInterrupt):
                gen_for(srv, tmp_path / "c").run(prompts(5), progress=False)
        finally:
            cls.batch_create = real
        assert srv.batch_creates == 2 and json.loads(journals(tmp_path / "c")[0].read_text())["batch_id"] is None
        srv.batch_polls = 0
        # a newer batch of as many requests, from another cache: the provider lists it first, it is not ours
        gen_for(srv, tmp_path / "other").run([chat(f"unrelated {i}") for i in range(3)], progress=False)
        gen2 = gen_for(srv, tmp_path / "c")
        out = gen2.run(prompts(5), progress=False)
        assert all(r.ok for r in out) and srv.batch_creates == 3 and gen2.ledger.cache_hits == 2 and gen2.ledger.requests == 3
    assert journals(tmp_path / "c") == []


@pytest.mark.parametrize("server", [FakeOpenAIServer, FakeAnthropicServer])
def test_a_kill_before_the_create_sends_the_requests_in_a_new_batch(tmp_path, server, caplog):
    with server() as srv:
        cls, real, die = _die_in_create(server, after=False)
        cls.batch_create = die
        try:
            with pytest.raises(KeyboardInterrupt):
                gen_for(srv, tmp_path / "c").run(prompts(3), progress=False)
        finally:
            cls.batch_create = real
        assert srv.batch_creates == 0 and len(journals(tmp_path / "c")) == 1
        with caplog.at_level(logging.WARNING, logger="medssr.llm"):
            out = gen_for(srv, tmp_path / "c").run(prompts(3), progress=False)
        assert all(r.ok for r in out) and srv.batch_creates == 1 and "no batch id" in caplog.text
    assert journals(tmp_path / "c") == []


# -- budget -------------------------------------------------------------------------------------------------------------
def test_max_usd_sends_only_the_prefix_of_the_batch_that_fits_at_the_batch_price(tmp_path):
    with FakeOpenAIServer() as srv:
        gen = gen_for(srv, tmp_path / "c", max_tokens=100)
        reqs = prompts(10)
        worst = gen.worst_case_cost(reqs[0], batch=True)
        assert worst == pytest.approx(gen.worst_case_cost(reqs[0]) / 2)
        out = gen.run(reqs, progress=False, max_usd=3.5 * worst)
        assert srv.batch_creates == 1 and len(srv.batch_items) == 4  # admitted while under the cap: at most one over
    assert [r.ok for r in out] == [True] * 4 + [False] * 6
    assert all(r.error.startswith("budget exhausted") for r in out[4:])
    assert gen.ledger.counts()["faults"]["budget_skipped"] == 6 and gen.ledger.reserved_usd == pytest.approx(0.0)
    assert gen.ledger.spend_usd <= 4 * worst


# -- configuration ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["local", "openai_compatible"])
def test_batch_with_a_backend_without_batch_endpoints_is_a_params_error(tmp_path, backend):
    with pytest.raises(LLMError, match=r"synth\.generator\.batch"):
        make_generator(GeneratorCfg(backend=backend, model="m", base_url="http://127.0.0.1:9/v1", batch=True), tmp_path)


# -- tokens ---------------------------------------------------------------------------------------------------------------
def test_no_offline_tokenizer_for_anthropic_or_servers_falls_back_to_the_byte_bound():
    assert offline_tokenizer("anthropic", "claude-test") is None and offline_tokenizer("openai_compatible", "m") is None
    assert tokenizer_name("anthropic", "claude-test").startswith("utf-8 bytes")


def test_openai_tokenizer_counts_o200k_tokens_offline():
    pytest.importorskip("bpe_openai")
    count = offline_tokenizer("openai", "gpt-4o-mini")
    assert count("Hello, world!") == 4 and count("<|endoftext|>") > 1  # special-token text is plain text
    assert offline_tokenizer("openai", "gpt-5-mini") is not None and tokenizer_name("openai", "gpt-4o") == "bpe-openai"


def test_openai_worst_case_uses_the_tokenizer_count_instead_of_bytes(tmp_path):
    pytest.importorskip("bpe_openai")
    gen = make_generator(GeneratorCfg(backend="openai", model="gpt-4o-mini", base_url="http://127.0.0.1:9/v1"), tmp_path)
    text = "A 45-year-old woman presents with fever and a rash. " * 20
    worst = gen.worst_case_input_tokens(chat(text))
    assert offline_tokenizer("openai", "gpt-4o-mini")(text) < worst < len(text.encode())


def test_usage_tokens_are_what_the_ledger_bills(tmp_path):
    with FakeOpenAIServer() as srv:
        gen = gen_for(srv, tmp_path / "c")
        out = gen.run(prompts(2), progress=False)
    assert out[0].input_tokens == count_tokens(prompts(2)[0].messages[0][1])
    assert gen.ledger.input_tokens == sum(r.input_tokens for r in out)


def _all_text(root: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in root.rglob("*") if p.is_file())
