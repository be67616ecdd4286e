"""Generator backends through the official clients against real loopback servers, the cache, the ledger,
and the local transformers backend on a tiny random Llama."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from medssr.config import GeneratorCfg, PriceCfg
from medssr.llm import Generator, LLMError, LLMRequest, ResponseCache, chat, make_generator
from medssr.llm.ledger import Ledger
from tests.llm_servers import (
    FakeAnthropicServer,
    FakeOpenAIServer,
    Fault,
    auth_error,
    count_tokens,
    cut_body,
    dropped,
    empty_choices,
    first_time_faults,
    garbage,
    malformed,
    question_json,
    rate_limited,
    reply,
    server_error,
    slow,
    timed_out,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = {"type": "object", "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
          "required": ["question", "answer"], "additionalProperties": False}
PRICES = {"gpt-test": PriceCfg(input_per_mtok=2.0, output_per_mtok=8.0)}


@pytest.fixture
def openai_key(monkeypatch) -> str:
    key = "sk-canary-7f3a9c1e5b2d4f6a8c0e"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    return key


@pytest.fixture
def srv():
    with FakeOpenAIServer() as s:
        yield s


@pytest.fixture
def asrv():
    with FakeAnthropicServer() as s:
        yield s


def openai_gen(srv: FakeOpenAIServer, tmp_path: Path, backend: str = "openai", **kw) -> Generator:
    cfg = GeneratorCfg(**{"backend": backend, "model": "gpt-test", "base_url": srv.base_url, "concurrency": 4,
                          "max_retries": 2, "timeout_s": 5.0, **kw})
    return make_generator(cfg, tmp_path / "cache", prices=PRICES)


def anthropic_gen(srv: FakeAnthropicServer, tmp_path: Path, monkeypatch, **kw) -> Generator:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-canary-0001")
    cfg = GeneratorCfg(**{"backend": "anthropic", "model": "claude-test", "base_url": srv.base_url, "concurrency": 4,
                          "max_retries": 2, "timeout_s": 5.0, **kw})
    return make_generator(cfg, tmp_path / "cache")


# ---------------------------------------------------------------------------------------------- openai
def test_openai_success_counts_usage_and_cost(srv, tmp_path, openai_key):
    gen = openai_gen(srv, tmp_path)
    reqs = [chat(f"Write a question about disease {i}", system="You are an examiner.") for i in range(3)]
    out = gen.run(reqs, progress=False)
    assert [r.error for r in out] == [None] * 3
    assert json.loads(out[1].text)["question"] == "Echo: Write a question about disease 1"
    expected_out = count_tokens(out[0].text)
    assert (out[0].input_tokens, out[0].output_tokens, out[0].finish_reason) == (10, expected_out, "stop")
    assert out[0].cost_usd == pytest.approx((10 * 2.0 + expected_out * 8.0) / 1e6)
    totals = gen.ledger.to_dict()
    assert (totals["requests"], totals["cache_hits"], totals["input_tokens"]) == (3, 0, 30)
    assert totals["spend_usd"] == pytest.approx(sum(r.cost_usd for r in out), abs=1e-6)
    body = srv.requests[0].body
    assert body["model"] == "gpt-test" and body["max_completion_tokens"] == gen.cfg.max_tokens and body["messages"][0]["role"] == "system"
    assert srv.requests[0].headers["authorization"] == f"Bearer {openai_key}"


def test_openai_structured_output_sends_strict_json_schema(srv, tmp_path, openai_key):
    gen = openai_gen(srv, tmp_path)
    gen.run([chat("q", json_schema=SCHEMA, schema_name="mcq")], progress=False)
    assert srv.requests[0].body["response_format"] == {"type": "json_schema", "json_schema": {"name": "mcq", "schema": SCHEMA, "strict": True}}


def test_openai_unstructured_when_cfg_structured_is_false(srv, tmp_path, openai_key):
    gen = openai_gen(srv, tmp_path, structured=False)
    gen.run([chat("q", json_schema=SCHEMA)], progress=False)
    assert "response_format" not in srv.requests[0].body


def test_openai_compatible_needs_no_key_and_sends_max_tokens_and_seed(srv, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    gen = openai_gen(srv, tmp_path, backend="openai_compatible", max_tokens=64)
    out = gen.run([chat("q", json_schema=SCHEMA)], progress=False)
    body = srv.requests[0].body
    assert out[0].ok and gen.name == "openai_compatible:gpt-test"
    assert srv.requests[0].headers["authorization"] == "Bearer EMPTY"
    assert body["max_tokens"] == 64 and isinstance(body["seed"], int) and body["response_format"]["type"] == "json_schema"


def test_truncated_output_reports_length_finish_reason(srv, tmp_path, openai_key):
    gen = openai_gen(srv, tmp_path, max_tokens=5)
    out = gen.run([chat("q")], progress=False)
    assert out[0].ok and out[0].finish_reason == "length" and out[0].output_tokens == 5


# ---------------------------------------------------------------------------------------------- anthropic
def test_anthropic_structured_output_forces_tool_and_returns_its_input(asrv, tmp_path, monkeypatch):
    gen = anthropic_gen(asrv, tmp_path, monkeypatch)
    out = gen.run([chat("Ask about gout", system="You are an examiner.", json_schema=SCHEMA, schema_name="mcq")], progress=False)
    body = asrv.requests[0].body
    assert body["tools"][0]["input_schema"] == SCHEMA and body["tool_choice"] == {"type": "tool", "name": "mcq"}
    assert body["system"] == "You are an examiner." and [m["role"] for m in body["messages"]] == ["user"]
    assert out[0].ok and out[0].finish_reason == "tool_use"
    assert json.loads(out[0].text)["question"] == "Echo: Ask about gout"
    assert (out[0].input_tokens, out[0].output_tokens) == (7, count_tokens(question_json("Echo: Ask about gout")))
    assert "sk-ant-canary-0001" in asrv.requests[0].headers["authorization"]  # anthropic 2.x sends the key as a Bearer token


def test_anthropic_prefix_is_prefilled_and_included_in_text(asrv, tmp_path, monkeypatch):
    asrv.responder = lambda req: ' "A"}'
    gen = anthropic_gen(asrv, tmp_path, monkeypatch)
    out = gen.run([chat("q", assistant_prefix='{"answer":')], progress=False)
    assert asrv.requests[0].body["messages"][-1] == {"role": "assistant", "content": '{"answer":'}
    assert json.loads(out[0].text) == {"answer": "A"}


def test_anthropic_retries_429_and_500_then_succeeds(asrv, tmp_path, monkeypatch):
    asrv.script(rate_limited(0.05), server_error(529))
    gen = anthropic_gen(asrv, tmp_path, monkeypatch, concurrency=1)
    out = gen.run([chat("q")], progress=False)
    assert out[0].ok and asrv.calls() == 3


# ---------------------------------------------------------------------------------------------- faults
def test_429_is_retried_after_the_retry_after_delay(srv, tmp_path, openai_key):
    srv.script(rate_limited(1.0))  # the client's own backoff would wait <= 0.5 s: a >= 1 s gap proves Retry-After was honoured
    out = openai_gen(srv, tmp_path, concurrency=1).run([chat("q")], progress=False)
    assert out[0].ok and srv.calls() == 2
    assert srv.requests[1].t - srv.requests[0].t >= 0.95


def test_500_is_retried_with_backoff_then_succeeds(srv, tmp_path, openai_key):
    srv.script(server_error(), server_error(502))
    out = openai_gen(srv, tmp_path, concurrency=1).run([chat("q")], progress=False)
    assert out[0].ok and srv.calls() == 3


def test_500_after_all_retries_is_an_error_not_an_exception(srv, tmp_path, openai_key):
    srv.rule = lambda req: server_error()
    out = openai_gen(srv, tmp_path, max_retries=1).run([chat("q")], progress=False)
    assert srv.calls() == 2
    assert out[0].error.startswith("InternalServerError: Error code: 500") and "gave up after 1 retries" in out[0].error


def test_400_is_not_retried(srv, tmp_path, openai_key):
    srv.script(Fault(status=400, message="Invalid schema for response_format"))
    out = openai_gen(srv, tmp_path).run([chat("q")], progress=False)
    assert srv.calls() == 1 and "BadRequestError" in out[0].error and "not retryable" in out[0].error


def test_timeout_is_retried_then_reported_with_the_timeout(srv, tmp_path, openai_key):
    srv.rule = lambda req: slow(3.0)
    t0 = time.perf_counter()
    out = openai_gen(srv, tmp_path, timeout_s=0.3, max_retries=1).run([chat("q")], progress=False)
    assert time.perf_counter() - t0 < 2.5  # two 0.3 s attempts and one backoff, not the server's 3 s
    assert srv.calls() == 2
    assert out[0].error.startswith("APITimeoutError") and "timeout_s=0.3" in out[0].error and "gave up after 1 retries" in out[0].error


def test_malformed_json_body_is_retried_once_then_succeeds(srv, tmp_path, openai_key):
    srv.script(malformed())
    out = openai_gen(srv, tmp_path).run([chat("q")], progress=False)
    assert out[0].ok and srv.calls() == 2


def test_malformed_json_body_twice_is_an_error(srv, tmp_path, openai_key):
    srv.rule = lambda req: malformed()
    gen = openai_gen(srv, tmp_path)
    out = gen.run([chat("q")], progress=False)
    assert srv.calls() == 2 and "malformed response body" in out[0].error
    assert gen.ledger.to_dict()["failures"] == 1


def test_invalid_question_text_is_returned_as_is(srv, tmp_path, openai_key):
    srv.script(reply('{"question": "What is the most likely diag'))
    out = openai_gen(srv, tmp_path).run([chat("q")], progress=False)
    assert out[0].ok and out[0].text == '{"question": "What is the most likely diag'


def every_fault() -> list[Fault]:
    """One of each fault kind the transport and the parser must count (the timeout needs timeout_s < 2.5)."""
    return [rate_limited(0.05), server_error(503), timed_out(2.5), malformed(), cut_body(), empty_choices(), garbage(), dropped()]


def nonzero(d: dict) -> dict:
    return {k: v for k, v in d.items() if v}


def test_every_retried_fault_is_counted_by_kind_and_http_requests_match_the_server(srv, tmp_path, openai_key, caplog):
    caplog.set_level(logging.WARNING, logger="medssr.llm")
    srv.rule = first_time_faults(every_fault())
    gen = openai_gen(srv, tmp_path, concurrency=4, timeout_s=1.0, max_retries=2)
    out = gen.run([chat(f"q{i}") for i in range(10)], progress=False)
    assert all(r.ok for r in out)
    totals = gen.ledger.to_dict()
    assert nonzero(totals["faults"]) == srv.fault_counts() == {"rate_limit": 1, "server_error": 1, "timeout": 1, "connection": 1,
                                                              "malformed_body": 4}
    assert (totals["requests"], totals["http_requests"], totals["retries"]) == (10, len(srv.requests), 8) and len(srv.requests) == 18
    warned = [r.getMessage() for r in caplog.records if " fault (" in r.getMessage()]
    assert len(warned) == 8 and all(m.startswith("openai:gpt-test: ") for m in warned)


def test_anthropic_faults_are_counted_like_openai_ones(asrv, tmp_path, monkeypatch):
    asrv.rule = first_time_faults([rate_limited(0.05), server_error(529), malformed(), cut_body(), empty_choices(), dropped()])
    gen = anthropic_gen(asrv, tmp_path, monkeypatch, concurrency=3)
    out = gen.run([chat(f"q{i}") for i in range(6)], progress=False)
    totals = gen.ledger.to_dict()
    assert all(r.ok for r in out)
    assert nonzero(totals["faults"]) == asrv.fault_counts() and totals["http_requests"] == len(asrv.requests) == 12
    assert totals["retries"] == 6


def test_a_fault_that_exhausts_retries_is_counted_each_time_it_is_met(srv, tmp_path, openai_key):
    srv.rule = lambda req: server_error()
    gen = openai_gen(srv, tmp_path, max_retries=2)
    out = gen.run([chat("q")], progress=False)
    totals = gen.ledger.to_dict()
    assert not out[0].ok and totals["failures"] == 1
    assert (totals["http_requests"], totals["retries"], totals["faults"]["server_error"]) == (3, 2, 3) == (srv.calls(), 2, 3)


# ---------------------------------------------------------------------------------------------- budget
def test_max_usd_is_a_cap_under_concurrency_at_most_one_request_over(tmp_path, openai_key):
    """Concurrency 8 and a budget of ~2.5 requests: today's first wave sent all 8 before any cost was known."""
    with FakeOpenAIServer(latency_s=0.1) as s:
        gen = openai_gen(s, tmp_path, concurrency=8, max_tokens=200)
        reqs = [chat(f"Write question {i} about " + "a rare disease " * 20) for i in range(24)]
        one = gen.ledger.cost("gpt-test", count_tokens(reqs[0].messages[0][1]), count_tokens(question_json("Echo: " + "x " * 40)))
        max_usd = 2.5 * one
        out = gen.run(reqs, progress=False, max_usd=max_usd)
        calls = s.calls()
    worst_one = gen.ledger.cost("gpt-test", max(count_tokens(r.messages[0][1]) for r in reqs), 200)  # the server's count + max_tokens
    totals = gen.ledger.to_dict()
    assert totals["spend_usd"] <= max_usd + worst_one
    assert totals["spend_usd"] >= max_usd  # the budget is used, not left mostly idle
    skipped = [r for r in out if r.error and r.error.startswith("budget exhausted")]
    assert len(skipped) == 24 - calls == totals["faults"]["budget_skipped"] and calls == totals["requests"]
    assert gen.ledger.reserved_usd == 0.0  # every reservation was settled or released


def test_worst_case_input_bounds_the_prompt_and_the_schema(srv, tmp_path, openai_key):
    gen = openai_gen(srv, tmp_path)
    plain, structured = chat("Fièvre " * 50), chat("Fièvre " * 50, json_schema=SCHEMA)
    assert gen.worst_case_input_tokens(plain) >= len(("Fièvre " * 50).encode()) > count_tokens("Fièvre " * 50)
    assert gen.worst_case_input_tokens(structured) >= gen.worst_case_input_tokens(plain) + len(json.dumps(SCHEMA))
    assert gen.worst_case_cost(plain) == pytest.approx(gen.ledger.cost("gpt-test", gen.worst_case_input_tokens(plain), gen.cfg.max_tokens))


# ---------------------------------------------------------------------------------------------- run loop
def test_concurrency_is_bounded_and_overlaps_requests(tmp_path, openai_key):
    with FakeOpenAIServer(latency_s=0.2) as s:
        t0 = time.perf_counter()
        out = openai_gen(s, tmp_path, concurrency=4).run([chat(f"q{i}") for i in range(8)], progress=False)
        wall = time.perf_counter() - t0
    assert all(r.ok for r in out) and s.max_in_flight == 4
    assert wall < 1.5  # serial cannot beat 8 x 0.2 = 1.6 s; ideal 0.4 s


def test_responses_keep_request_order_and_on_done_sees_each_once(srv, tmp_path, openai_key):
    srv.rule = lambda req: slow(0.3) if "q0" in req.prompt else None  # the first request finishes last
    seen: list[int] = []
    out = openai_gen(srv, tmp_path).run([chat(f"q{i}") for i in range(5)], on_done=lambda i, r: seen.append(i), progress=False)
    assert [json.loads(r.text)["question"] for r in out] == [f"Echo: q{i}" for i in range(5)]
    assert sorted(seen) == [0, 1, 2, 3, 4] and seen[-1] == 0


def test_identical_requests_in_one_run_are_sent_once(srv, tmp_path, openai_key):
    gen = openai_gen(srv, tmp_path)
    out = gen.run([chat("same"), chat("same"), chat("same", nonce="2")], progress=False)
    assert srv.calls() == 2 and out[0].text == out[1].text and (out[0].cached, out[1].cached) == (False, True)


def test_max_usd_stops_sending_once_spent(srv, tmp_path, openai_key):
    gen = openai_gen(srv, tmp_path, concurrency=1)
    out = gen.run([chat(f"q{i}") for i in range(5)], progress=False, max_usd=1e-9)
    assert srv.calls() == 1 and out[0].ok
    assert all(r.error and r.error.startswith("budget exhausted") for r in out[1:])
    assert gen.ledger.to_dict()["requests"] == 1  # unsent requests are not counted as made


# ---------------------------------------------------------------------------------------------- cache
def test_second_run_is_served_from_cache_with_zero_calls(srv, tmp_path, openai_key):
    reqs = [chat(f"q{i}", json_schema=SCHEMA) for i in range(4)]
    first = openai_gen(srv, tmp_path).run(reqs, progress=False)
    gen2 = openai_gen(srv, tmp_path)
    second = gen2.run(reqs, progress=False)
    assert srv.calls() == 4
    assert [r.text for r in second] == [r.text for r in first] and all(r.cached for r in second)
    assert second[0].cost_usd == first[0].cost_usd and second[0].input_tokens == first[0].input_tokens
    totals = gen2.ledger.to_dict()
    assert (totals["requests"], totals["cache_hits"], totals["spend_usd"]) == (0, 4, 0.0)
    assert totals["saved_usd"] == pytest.approx(sum(r.cost_usd for r in first), abs=1e-6)


def test_cache_key_uses_nonce_and_settings_but_not_base_url(tmp_path, openai_key):
    with FakeOpenAIServer() as a:
        openai_gen(a, tmp_path).run([chat("q")], progress=False)
    with FakeOpenAIServer() as b:  # another port: same model, same cache entry
        openai_gen(b, tmp_path).run([chat("q")], progress=False)
        assert b.calls() == 0
        openai_gen(b, tmp_path).run([chat("q", nonce="again")], progress=False)
        openai_gen(b, tmp_path, temperature=0.1).run([chat("q")], progress=False)
        openai_gen(b, tmp_path).run([chat("q", json_schema=SCHEMA)], progress=False)
        assert b.calls() == 3


def test_failed_responses_are_not_cached(srv, tmp_path, openai_key):
    srv.script(Fault(status=400))
    assert not openai_gen(srv, tmp_path).run([chat("q")], progress=False)[0].ok
    assert openai_gen(srv, tmp_path).run([chat("q")], progress=False)[0].ok
    assert srv.calls() == 2 and len(ResponseCache(tmp_path / "cache")) == 1


def test_corrupt_cache_entry_is_a_miss_and_gets_rewritten(tmp_path):
    cache = ResponseCache(tmp_path)
    key = "ab" + "0" * 62
    cache.path(key).parent.mkdir(parents=True)
    cache.path(key).write_text('{"text": "half')
    assert cache.get(key) is None and cache.stats()["corrupt"] == 1
    cache.put(key, {"text": "whole", "input_tokens": 1})
    assert cache.get(key)["text"] == "whole" and not list(tmp_path.rglob("*.tmp"))


CHILD = textwrap.dedent("""
    import sys
    from medssr.config import GeneratorCfg
    from medssr.llm import chat, make_generator
    cfg = GeneratorCfg(backend="openai_compatible", model="gpt-test", base_url=sys.argv[1], concurrency=1, max_retries=0)
    gen = make_generator(cfg, sys.argv[2])
    gen.run([chat(f"prompt-{i:03d}") for i in range(int(sys.argv[3]))], progress=False,
            on_done=lambda i, r: print(f"done prompt-{i:03d}", flush=True))
""")


def test_sigkill_mid_run_loses_no_finished_response(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    n = 12
    with FakeOpenAIServer(latency_s=0.1) as s:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        child = subprocess.Popen([sys.executable, "-c", CHILD, s.base_url, str(tmp_path / "cache"), str(n)],
                                 stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        done: list[str] = []
        deadline = time.time() + 60
        while len(done) < 4 and time.time() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            done.append(line.split()[1])
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        child.stdout.close()
        assert len(done) == 4, f"child finished only {done}"
        calls_before = s.calls()
        gen = make_generator(GeneratorCfg(backend="openai_compatible", model="gpt-test", base_url=s.base_url, concurrency=1),
                             tmp_path / "cache")
        out = gen.run([chat(f"prompt-{i:03d}") for i in range(n)], progress=False)
        assert all(r.ok for r in out)
        assert all(s.calls(p) == 1 for p in done)  # nothing reported finished was asked again
        assert gen.ledger.cache_hits >= 4 and s.calls() <= n + 1 and calls_before < n


# ---------------------------------------------------------------------------------------------- secrets and config
def test_api_key_appears_only_in_the_auth_header(srv, tmp_path, openai_key, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    srv.script(None, auth_error(echo_key=True), rate_limited(0.01), None)
    gen = openai_gen(srv, tmp_path, concurrency=1)
    out = gen.run([chat(f"q{i}") for i in range(3)], progress=True)
    assert "Incorrect API key provided: Bearer ***" in out[1].error  # the server did echo it: scrubbed
    assert all(openai_key in r.headers["authorization"] for r in srv.requests)
    captured = capsys.readouterr()
    places = {
        "cache": "".join(p.read_text() for p in (tmp_path / "cache").rglob("*.json")),
        "ledger": json.dumps(gen.ledger.to_dict(entries=True)),
        "errors": " ".join(r.error or "" for r in out),
        "logs": caplog.text,
        "stdout/stderr": captured.out + captured.err,
        "server bodies": srv.log_text(),
    }
    assert places["cache"] and "Retrying request" in places["logs"]  # the SDK's own debug logs were captured too
    assert [where for where, text in places.items() if openai_key in text] == []


PASSWORD = "pw-canary-5e1f0b7a"


def test_base_url_password_is_sent_as_basic_auth_and_written_nowhere(srv, tmp_path, openai_key, caplog, capsys):
    caplog.set_level(logging.DEBUG)  # httpx2 logs each request URL at INFO: with user:pass@ in it, the password leaked there
    srv.script(None, Fault(status=401, message="bad credentials {basic-password} for {authorization}"),
               garbage("<html>proxy saw password {basic-password}</html>"), garbage("<html>again {basic-password}</html>"),
               reply("your password is {basic-password}"))  # a 200 whose model text echoes it
    url = srv.base_url.replace("http://", f"http://proxyuser:{PASSWORD}@")
    gen = openai_gen(srv, tmp_path, base_url=url, concurrency=1, max_retries=0)
    out = gen.run([chat(f"q{i}") for i in range(4)], progress=False)
    assert srv.requests[0].headers["authorization"].startswith("Basic ")  # the credential still authenticates
    assert not out[1].ok and not out[2].ok and "bad credentials ***" in out[1].error and out[3].text == "your password is ***"
    places = {"cache": "".join(p.read_text() for p in (tmp_path / "cache").rglob("*.json")), "logs": caplog.text,
              "errors": " ".join(r.error or "" for r in out), "texts": " ".join(r.text for r in out),
              "ledger": json.dumps(gen.ledger.to_dict(entries=True)), "name": gen.name, "stdio": "".join(capsys.readouterr())}
    assert places["cache"] and "HTTP Request: POST http://127.0.0.1" in places["logs"]
    assert [where for where, text in places.items() if PASSWORD in text or openai_key in text] == []


@pytest.mark.parametrize(("backend", "env"), [("openai", "OPENAI_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY")])
def test_missing_api_key_raises_llm_error_naming_the_variable(tmp_path, monkeypatch, backend, env):
    monkeypatch.delenv(env, raising=False)
    with pytest.raises(LLMError, match=env):
        make_generator(GeneratorCfg(backend=backend, model="m"), tmp_path)


def test_unknown_backend_raises_llm_error(tmp_path):
    with pytest.raises(LLMError, match="unknown backend 'bard'"):
        make_generator(GeneratorCfg(backend="bard"), tmp_path)  # type: ignore[arg-type]


def test_openai_compatible_without_base_url_raises(tmp_path):
    with pytest.raises(LLMError, match="base_url"):
        make_generator(GeneratorCfg(backend="openai_compatible", model="m"), tmp_path)


def test_request_rejects_unknown_role():
    with pytest.raises(ValueError, match="messages\\[0\\]"):
        LLMRequest(messages=(("tool", "x"),))


# ---------------------------------------------------------------------------------------------- local
def local_gen(model_dir: Path, cache: Path, **kw) -> Generator:
    # free decoding unless a test asks for the guide (the shipped default guides: params.yaml's 135M generator)
    cfg = GeneratorCfg(**{"backend": "local", "model": "tiny", "max_tokens": 8, "concurrency": 4, "temperature": 0.8,
                          "guided_layout": False, **kw})
    return make_generator(cfg, cache, model_dir=str(model_dir))


@pytest.fixture(scope="module")
def tiny_local(tiny_model_dir, tmp_path_factory, one_torch_thread) -> Generator:
    """One loaded tiny-Llama generator for the module (on one torch thread: the tests check behaviour, not speed)."""
    return local_gen(tiny_model_dir, tmp_path_factory.mktemp("unused"))


def fresh(gen: Generator, cache_dir: Path) -> Generator:
    """The same loaded model with an empty cache and ledger."""
    g = copy.copy(gen)
    g.cache, g.ledger = ResponseCache(cache_dir), Ledger(free=True)
    return g


def test_local_generates_with_real_token_counts(tiny_local, tmp_path):
    gen = fresh(tiny_local, tmp_path)
    req = chat("Write one question about gout.", assistant_prefix='{"question": "')
    out = gen.run([req, chat("Hi")], progress=False)
    assert all(r.ok for r in out) and out[0].text.startswith('{"question": "')
    assert out[0].input_tokens == len(gen.prompt_ids(req)) and 1 <= out[0].output_tokens <= 8
    assert out[0].finish_reason in ("stop", "length") and out[0].cost_usd == 0.0
    assert gen.ledger.to_dict()["output_tokens"] == out[0].output_tokens + out[1].output_tokens


def test_local_sampling_is_seeded_per_request_not_per_batch(tiny_local, tmp_path):
    target = chat("Write one question about cystic fibrosis.")
    others = [chat("short"), chat("a somewhat longer prompt about many other diseases and their treatments")]
    alone = fresh(tiny_local, tmp_path / "a").run([target], progress=False)[0]
    batched = fresh(tiny_local, tmp_path / "b").run([*others, target], progress=False)[2]
    repeat = fresh(tiny_local, tmp_path / "c").run([chat("Write one question about cystic fibrosis.", nonce="2")], progress=False)[0]
    assert alone.text == batched.text and alone.output_tokens == batched.output_tokens
    assert repeat.text != alone.text  # a nonce asks for a different sample


def test_local_batch_runs_as_two_halves_side_by_side_on_half_the_threads_each(tiny_local, tmp_path):
    import threading

    import torch

    gen = fresh(tiny_local, tmp_path)
    calls: list[tuple[int, int, int]] = []
    inner = gen._generate

    def spy(prompts, keys, tok=None):
        calls.append((threading.get_ident(), torch.get_num_threads(), len(prompts)))
        return inner(prompts, keys, tok)

    gen._generate = spy
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = gen.run([chat(f"Write one question about disease {i}.") for i in range(5)], progress=False)  # concurrency 4
        assert torch.get_num_threads() == 2  # restored after each batch
    finally:
        torch.set_num_threads(before)
    assert all(r.ok for r in out)
    assert sorted(n for *_, n in calls) == [1, 2, 2]  # batch of 4 -> halves of 2 (threads), then 1 alone (in the caller)
    assert [t for _, t, n in calls if n == 2] == [1, 1] and len({i for i, _, n in calls if n == 2}) == 2


def test_local_split_batch_gives_its_halves_texts_run_one_by_one_and_repeats_exactly(tiny_local, tiny_guided, tmp_path):
    for g, name in ((tiny_local, "free"), (tiny_guided, "guided")):
        reqs = _layout_requests(4)
        first = fresh(g, tmp_path / f"{name}1").run(reqs, progress=False)
        again = fresh(g, tmp_path / f"{name}2").run(reqs, progress=False)
        assert [(r.text, r.output_tokens, r.finish_reason) for r in first] == [(r.text, r.output_tokens, r.finish_reason) for r in again]
        assert g.parts(4) == [range(0, 2), range(2, 4)]
        ids = sorted(((g.prompt_ids(r), g.key(r), i) for i, r in enumerate(reqs)), key=lambda t: len(t[0]))  # _execute's order
        alone = [row for half in (ids[:2], ids[2:]) for row in g._generate([p for p, _, _ in half], [k for _, k, _ in half])]
        prefix = "Question:"
        assert {i: prefix + text for (_, _, i), (text, _, _) in zip(ids, alone, strict=True)} == {i: r.text for i, r in enumerate(first)}
        assert len({r.text for r in first}) == 4


def test_local_cache_key_depends_on_the_weights(tiny_local, tmp_path):
    twin = fresh(tiny_local, tmp_path)
    twin.model_id = "tiny#0000000000000000"  # what another checkpoint under the same name gets
    assert twin.key(chat("q")) != tiny_local.key(chat("q")) and tiny_local.model_id.startswith("tiny#")


def test_local_missing_model_raises_llm_error(tmp_path):
    with pytest.raises(LLMError, match="model_dir"):
        local_gen(tmp_path / "nope", tmp_path / "c")


LAYOUT = re.compile(r"Question:.+\nA\. \S.*\nB\. \S.*\nC\. \S.*\nD\. \S.*\nAnswer: [ABCD]", re.S)


@pytest.fixture(scope="module")
def tiny_guided(tiny_local) -> Generator:
    """The tiny random Llama, steered through the question layout (its own replies never have it)."""
    g = copy.copy(tiny_local)
    g.cfg = dataclasses.replace(tiny_local.cfg, guided_layout=True, max_tokens=40)
    return g


def _layout_requests(n: int) -> list[LLMRequest]:
    return [chat(f"Write one question about disease {i}.", assistant_prefix="Question:") for i in range(n)]


def test_guided_layout_gives_every_reply_the_whole_question_layout(tiny_local, tiny_guided, tmp_path):
    from medssr.synth.parse import InvalidQuestion, parse_reply

    free = fresh(tiny_local, tmp_path / "free").run(_layout_requests(6), progress=False)
    guided = fresh(tiny_guided, tmp_path / "guided").run(_layout_requests(6), progress=False)
    for r in free:
        with pytest.raises(InvalidQuestion):
            parse_reply(r.text)
    for r in guided:
        assert r.ok and LAYOUT.fullmatch(r.text), r.text
        pq = parse_reply(r.text)
        assert list(pq.options) == list("ABCD") and pq.answer in "ABCD"
        assert r.finish_reason in ("stop", "length") and r.output_tokens <= 40 + 5 + 3 * 5 + 2


def test_guided_reply_does_not_depend_on_its_batch(tiny_guided, tmp_path):
    reqs = _layout_requests(4)
    alone = fresh(tiny_guided, tmp_path / "a").run(reqs[3:], progress=False)[0]
    batched = fresh(tiny_guided, tmp_path / "b").run(reqs, progress=False)[3]
    assert alone.text == batched.text and alone.finish_reason == batched.finish_reason


def test_guided_and_free_replies_never_share_a_cache_entry(tiny_local, tiny_model_dir, tmp_path):
    guided = make_generator(dataclasses.replace(tiny_local.cfg, guided_layout=True), tmp_path, model_dir=str(tiny_model_dir))
    assert guided.key(chat("q")) != tiny_local.key(chat("q"))


def test_guided_part_cut_at_its_budget_marks_the_reply_truncated(tiny_guided, tmp_path):
    """A random model almost never ends a line by itself: its stem runs into the budget, so the reply is 'length'."""
    out = fresh(tiny_guided, tmp_path).run(_layout_requests(4), progress=False)
    assert all(LAYOUT.fullmatch(r.text) for r in out)
    assert any(r.finish_reason == "length" for r in out)


@pytest.mark.slow
def test_local_smollm2_writes_text(smol_model_dir, tmp_path):
    gen = local_gen(smol_model_dir, tmp_path / "c", max_tokens=48, temperature=0.7)
    out = gen.run([chat("Write one multiple-choice question about gout with options A-D.")], progress=False)[0]
    assert out.ok and len(out.text.split()) >= 5 and out.output_tokens > 5
