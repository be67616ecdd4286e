"""The synthesize stage end to end: official OpenAI/Anthropic clients against loopback servers with injected
faults, real seeds, real benchmark questions and real corpus passages; crash-resume; secrets; budget; MLflow."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from medssr.config import GeneratorCfg, Params, PriceCfg, ProjectCfg, SynthCfg, load_params
from medssr.data.loaders import load_benchmarks, load_medmcqa
from medssr.knowledge.corpus import load_passages
from medssr.llm import make_generator
from medssr.records import read_partial_jsonl, read_questions, write_jsonl
from medssr.synth.classify import classify_category, classify_reasoning
from medssr.synth.parse import QUESTION_SCHEMA
from medssr.synth.plan import plan_attempt
from medssr.synth.prompts import PROMPT_NAMES, load_prompt
from medssr.synth.run import SynthError, SynthInputs, build_request, load_inputs, run_synthesize, summary_line
from tests.conftest import RAW, ROOT
from tests.llm_servers import (
    FakeAnthropicServer,
    FakeOpenAIServer,
    auth_error,
    count_tokens,
    cut_body,
    dropped,
    empty_choices,
    first_time_faults,
    garbage,
    malformed,
    rate_limited,
    reply,
    server_error,
    slow,
    timed_out,
)

CANARY = "sk-canary-7f3a9c2e-do-not-leak"
ANTHROPIC_CANARY = "sk-ant-canary-51b0d4e8-do-not-leak"

# Words for the fake model's questions: every reply differs, so no reply is a near-duplicate of another.
VOCAB = ("fever cough anemia renal hepatic cardiac murmur rash biopsy lesion infant nodule tremor ataxia seizure edema dyspnea "
         "jaundice ptosis myopathy hypotonia cataract scoliosis arrhythmia hematuria proteinuria neuropathy dysphagia alopecia").split()


def fake_question(req) -> str:
    """A valid, distinct four-option question seeded by the prompt text (so reruns get the same reply)."""
    r = random.Random(hashlib.sha256(req.last_user.encode()).hexdigest())
    stem = f"A {r.randint(2, 80)}-year-old patient has " + " ".join(r.choice(VOCAB) for _ in range(16)) + ". What is the most likely diagnosis?"
    opts = {k: " ".join(r.choice(VOCAB) for _ in range(3)) + f" type {r.randint(1, 9999)}" for k in "ABCD"}
    return json.dumps({"question": stem, "options": opts, "answer": r.choice("ABCD")})


@pytest.fixture(scope="module")
def benchmarks():
    b = load_benchmarks(load_params(ROOT / "params.yaml").data.benchmarks, RAW, names=["medmcqa", "medqa"])
    return {"medmcqa": b["medmcqa"][:400], "medqa": b["medqa"][:400]}


@pytest.fixture(scope="module")
def seeds(benchmarks):
    held_out = {q.id for q in load_benchmarks(load_params(ROOT / "params.yaml").data.benchmarks, RAW, names=["medmcqa"])["medmcqa"]}
    return [q for q in load_medmcqa(RAW) if q.id not in held_out and len(q.question) >= 100][:150]


@pytest.fixture(scope="module")
def knowledge():
    """Real MedQuAD GARD/GHR passages; a title-match retriever over them; the covered entities."""
    passages, _ = load_passages(["medquad_gard_ghr"], raw_dir=RAW)
    by_title: dict[str, list] = {}
    for p in passages:
        by_title.setdefault(p.title, []).append(p)
    entities = sorted(by_title)[:200]
    return entities, {e: [p.id for p in by_title[e]] for e in entities}, (lambda q, k: by_title.get(q, [])[:k])


def make_params(tmp_path: Path, backend: str, base_url: str, n: int = 8, **synth) -> Params:
    gen = {"backend": backend, "model": "fake-model", "base_url": base_url, "concurrency": 3, "max_retries": 3, "timeout_s": 5.0,
           "max_tokens": 300, **synth.pop("generator", {})}
    synth.setdefault("prompt_variant", "")  # the paper's F.1/F.2 with JSON replies (the shipped default is for a 135M model)
    return Params(project=ProjectCfg(experiment="synth-test"),
                  synth=SynthCfg(n=n, rare_ratio=synth.pop("rare_ratio", 0.0), generator=GeneratorCfg(**gen),
                                 cache_dir=str(tmp_path / "cache"), **synth))


def run(params: Params, tmp_path: Path, seeds, benchmarks, knowledge=None, out: str = "out", records=None, **kw) -> dict:
    entities, coverage, retriever = knowledge or ([], {}, None)
    inputs = SynthInputs(seeds, entities, coverage, benchmarks, [], entity_records=records or [])
    kw.setdefault("track", False)
    return run_synthesize(params, inputs, tmp_path / out / "questions.jsonl", tmp_path / out / "synth.json", retriever=retriever,
                          show_progress=False, **kw)


@pytest.fixture
def openai_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)


@pytest.fixture
def anthropic_key(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_CANARY)


# -- real clients, injected faults ------------------------------------------------------------------------
def test_openai_run_retries_429_500_timeout_and_malformed_json(tmp_path, openai_key, seeds, benchmarks):
    with FakeOpenAIServer(responder=fake_question) as srv:
        srv.script(rate_limited(0.2), server_error(500), slow(2.5), malformed())
        params = make_params(tmp_path, "openai", srv.base_url, n=9, generator={"timeout_s": 1.0})
        report = run(params, tmp_path, seeds, benchmarks)
        assert report["accepted"] == 9 and report["stopped"] == "done" and report["rejected"] == {}
        assert report["attempts"] == 9  # every fault was retried into a good answer, no attempt lost
        assert len(srv.requests) >= 9 + 4
        assert all(r.schema == QUESTION_SCHEMA for r in srv.requests)
    qs = read_questions(tmp_path / "out" / "questions.jsonl")
    assert [q.meta["attempt"] for q in qs] == list(range(9))
    q = qs[0]
    assert (q.source, q.split, q.answer, q.generator, q.rare_disease) == ("synthetic", "train", None, "openai:fake-model", None)
    assert q.meta["generator_answer"] in q.options and q.meta["prompt_kind"] == "F1" and len(q.seed_ids) == 2
    assert q.prompt_hash == load_prompt(PROMPT_NAMES["F1"]).hash and q.usage["output_tokens"] > 0


def test_invalid_and_truncated_replies_are_rejected_by_reason_and_replaced(tmp_path, openai_key, seeds, benchmarks):
    with FakeOpenAIServer(responder=fake_question) as srv:
        good = json.loads(fake_question(type("R", (), {"last_user": "x"})()))
        srv.script(
            reply('{"question": "A 40-year-old man with chest pain and diaphoresis', ),  # cut JSON, finish 'stop'
            reply("word " * 400),  # longer than max_tokens: the server cuts it and says finish_reason 'length'
            reply(json.dumps({**good, "options": {**good["options"], "D": "All of the above"}})),
            reply(json.dumps({**good, "question": "What is it?"})),
        )
        params = make_params(tmp_path, "openai", srv.base_url, n=6, generator={"concurrency": 1})
        report = run(params, tmp_path, seeds, benchmarks)
    assert report["rejected"] == {"bad_json": 1, "truncated": 1, "all_of_the_above": 1, "stem_too_short": 1}
    assert report["accepted"] == 6 and report["attempts"] == 10 and report["acceptance_rate"] == 0.6
    assert "attempt 0" in report["rejected_examples"]["bad_json"]


def test_anthropic_run_with_rare_knowledge_uses_the_forced_tool_and_survives_faults(tmp_path, anthropic_key, seeds, benchmarks, knowledge):
    with FakeAnthropicServer(responder=fake_question) as srv:
        srv.script(rate_limited(0.2), server_error(529), malformed())
        params = make_params(tmp_path, "anthropic", srv.root_url, n=10, rare_ratio=0.5, top_k=3)
        report = run(params, tmp_path, seeds, benchmarks, knowledge)
        assert report["accepted"] == 10 and report["stopped"] == "done"
        assert all(r.schema == QUESTION_SCHEMA for r in srv.requests)
        f2 = [r for r in srv.requests if "MEDICAL KNOWLEDGE CONTEXT" in r.last_user]
        assert f2 and any("[3] " in r.last_user for r in f2) and not any("[4] " in r.last_user for r in f2)  # top_k=3
    qs = read_questions(tmp_path / "out" / "questions.jsonl")
    entities, coverage, _ = knowledge
    rare = [q for q in qs if q.rare_disease]
    assert rare and all(q.meta["prompt_kind"] == "F2" and q.rare_disease in entities for q in rare)
    assert all(q.retrieved and set(q.retrieved) <= set(coverage[q.rare_disease]) for q in rare)
    assert all(not q.retrieved for q in qs if not q.rare_disease)
    assert report["f2_share"] == round(len(rare) / 10, 4) and report["prompt_kinds"]["F2"] >= len(rare)


def test_exhausted_retries_fail_clearly_and_the_rerun_sends_no_finished_request(tmp_path, openai_key, seeds, benchmarks):
    served = {"n": 0}

    def fail_after_six(req):
        served["n"] += 1
        return server_error(503) if served["n"] > 6 else None

    with FakeOpenAIServer(responder=fake_question, rule=fail_after_six) as srv:
        params = make_params(tmp_path, "openai", srv.base_url, n=10, generator={"max_retries": 1})
        with pytest.raises(SynthError, match=r"failed.*max_retries=1.*faults: server_error \d+\).*6 finished responses are kept.*rerun to resume"):
            run(params, tmp_path, seeds, benchmarks)
        finished = {r.last_user for r in srv.requests if r.fault is None}
    progress = tmp_path / "out" / "questions.progress.jsonl"
    assert len(read_partial_jsonl(progress)) == 6 and len(finished) == 6
    assert not (tmp_path / "out" / "questions.jsonl").exists()
    # Rerun against a healthy server with an EMPTY response cache: the progress file alone must stop re-sends.
    with FakeOpenAIServer(responder=fake_question) as srv2:
        params = make_params(tmp_path / "fresh", "openai", srv2.base_url, n=10)
        report = run(params, tmp_path, seeds, benchmarks)
        assert not finished & {r.last_user for r in srv2.requests}
        assert report["resumed_from_progress"] == 6 and report["accepted"] == 10
    # ... and the result equals an uninterrupted run.
    with FakeOpenAIServer(responder=fake_question) as srv3:
        run(make_params(tmp_path / "clean", "openai", srv3.base_url, n=10), tmp_path, seeds, benchmarks, out="clean")
    assert (tmp_path / "out" / "questions.jsonl").read_bytes() == (tmp_path / "clean" / "questions.jsonl").read_bytes()


def test_budget_is_a_cap_at_concurrency_8_and_keeps_what_was_made(tmp_path, openai_key, seeds, benchmarks):
    """max_usd of ~5 requests at concurrency 8: the first wave used to go out whole before any cost was known."""
    price = PriceCfg(input_per_mtok=1000.0, output_per_mtok=1000.0)  # ~$0.4 per request here
    with FakeOpenAIServer(responder=fake_question, latency_s=0.05) as srv:
        params = make_params(tmp_path, "openai", srv.base_url, n=50, max_usd=2.0, prices={"fake-model": price},
                             generator={"concurrency": 8})
        report = run(params, tmp_path, seeds, benchmarks)
        worst_one = max(count_tokens(r.prompt) for r in srv.requests) * 1e-3 + params.synth.generator.max_tokens * 1e-3
        assert report["stopped"] == "budget" and 0 < report["accepted"] < 50
        assert 2.0 <= report["cost_usd"] <= 2.0 + worst_one and report["spend_usd_this_run"] == report["cost_usd"]
        assert len(srv.requests) == report["attempts"] == report["requests"] == report["http_requests"]
        assert report["faults"]["budget_skipped"] > 0
    assert len(read_questions(tmp_path / "out" / "questions.jsonl")) == report["accepted"]


def test_retried_faults_are_counted_in_the_report_mlflow_and_the_summary_line(tmp_path, monkeypatch, openai_key, seeds, benchmarks,
                                                                              mlflow_store):
    monkeypatch.chdir(tmp_path)
    with FakeOpenAIServer(responder=fake_question) as srv:
        srv.rule = first_time_faults([rate_limited(0.05), server_error(502), timed_out(2.5), malformed(), cut_body(), empty_choices(),
                                      garbage(), dropped(), rate_limited(0.05)])
        params = make_params(tmp_path, "openai", srv.base_url, n=10, generator={"timeout_s": 1.0, "max_retries": 2})
        report = run(params, tmp_path, seeds, benchmarks, track=True)
        received, applied = len(srv.requests), srv.fault_counts()
    assert report["accepted"] == 10 and report["stopped"] == "done"
    assert applied == {"rate_limit": 2, "server_error": 1, "timeout": 1, "malformed_body": 4, "connection": 1}
    assert {k: v for k, v in report["faults"].items() if v} == applied
    n = report["attempts"]  # every attempt one logical request, each fault one more HTTP request
    assert (report["requests"], report["http_requests"], report["retries"]) == (n, received, 9) and received == n + 9
    con = sqlite3.connect(mlflow_store.removeprefix("sqlite:///"))
    metrics = dict(con.execute("SELECT key, value FROM latest_metrics").fetchall())
    con.close()
    assert (metrics["synth/requests"], metrics["synth/http_requests"], metrics["synth/retries"]) == (n, n + 9, 9)
    assert {k.removeprefix("synth/faults/"): v for k, v in metrics.items() if k.startswith("synth/faults/") and v} == applied
    assert metrics["synth/faults/budget_skipped"] == 0 and metrics["synth/faults/cache_corrupt"] == 0  # every kind, every run
    line = summary_line(report)
    assert f"{n} requests as {n + 9} HTTP requests (9 retries), faults: rate_limit 2, server_error 1, timeout 1, connection 1, malformed_body 4" in line


def test_benchmark_and_seed_copies_are_dropped_as_contamination(tmp_path, openai_key, seeds, benchmarks):
    bench_q, seed_q = benchmarks["medqa"][5], seeds[3]
    copy = lambda q: json.dumps({"question": q.question, "options": dict(q.options), "answer": "A"})  # noqa: E731
    with FakeOpenAIServer(responder=fake_question) as srv:
        srv.script(reply(copy(bench_q)), reply(copy(seed_q)), reply(copy(bench_q)))
        params = make_params(tmp_path, "openai", srv.base_url, n=5, generator={"concurrency": 1})
        report = run(params, tmp_path, seeds, benchmarks)
    assert report["contamination"]["by_kind"] == {"benchmark": 2, "seed": 1}
    assert report["contamination"]["by_group"] == {"medqa": 2, "seed": 1}
    assert report["contamination_dropped"] == 3 and report["accepted"] == 5 and report["valid"] == 8
    texts = {q.question for q in read_questions(tmp_path / "out" / "questions.jsonl")}
    assert bench_q.question not in texts and seed_q.question not in texts


def test_rerun_with_larger_n_reuses_every_earlier_attempt(tmp_path, openai_key, seeds, benchmarks):
    with FakeOpenAIServer(responder=fake_question) as srv:
        run(make_params(tmp_path, "openai", srv.base_url, n=4), tmp_path, seeds, benchmarks)
        first = (tmp_path / "out" / "questions.jsonl").read_text().splitlines()
        before = len(srv.requests)
        report = run(make_params(tmp_path, "openai", srv.base_url, n=9), tmp_path, seeds, benchmarks)
        assert len(srv.requests) - before == report["attempts"] - report["resumed_from_progress"]
    assert report["resumed_from_progress"] >= 4
    assert (tmp_path / "out" / "questions.jsonl").read_text().splitlines()[:4] == first


def test_a_damaged_progress_line_is_quarantined_counted_and_the_rerun_equals_the_first_run(tmp_path, openai_key, seeds, benchmarks):
    from medssr.synth.run import summary_line

    with FakeOpenAIServer(responder=fake_question) as srv:
        run(make_params(tmp_path, "openai", srv.base_url, n=4), tmp_path, seeds, benchmarks)
        first = (tmp_path / "out" / "questions.jsonl").read_bytes()
        progress = tmp_path / "out" / "questions.progress.jsonl"
        lines = progress.read_text().splitlines()
        lines[1] = lines[1][: len(lines[1]) // 2]  # a damaged middle line, newline kept
        progress.write_text("\n".join(lines) + "\n")
        report = run(make_params(tmp_path, "openai", srv.base_url, n=4), tmp_path, seeds, benchmarks)
    assert report["progress"]["quarantined_lines"] == 1 and report["progress"]["quarantine_file"]
    assert "1 damaged progress line quarantined" in summary_line(report)
    assert (tmp_path / "out" / "questions.jsonl").read_bytes() == first  # the lost response came back from the cache


# -- secrets and MLflow ----------------------------------------------------------------------------------
def _all_text(root: Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in root.rglob("*") if p.is_file() and p.suffix != ".db")


PASSWORD_CANARY = "pw-canary-0c4d9e21-do-not-leak"


@pytest.mark.parametrize("where", ["key", "base_url_userinfo"])
def test_canary_key_is_in_no_output_report_log_or_mlflow_record(tmp_path, monkeypatch, openai_key, seeds, benchmarks, caplog,
                                                                 capfd, mlflow_store, where):
    """The API key, or a proxy password in base_url's ``user:pass@`` (sent as Basic auth), written nowhere."""
    monkeypatch.chdir(tmp_path)  # MLflow's artifact root lands here
    caplog.set_level("DEBUG")
    canary = CANARY if where == "key" else PASSWORD_CANARY
    with FakeOpenAIServer(responder=fake_question) as srv:
        base_url = srv.base_url if where == "key" else srv.base_url.replace("http://", f"http://synth:{PASSWORD_CANARY}@")
        params = make_params(tmp_path, "openai", base_url, n=4)
        report = run(params, tmp_path, seeds, benchmarks, track=True)
        sent = srv.requests[0].headers["authorization"]
        assert sent == f"Bearer {CANARY}" if where == "key" else sent.startswith("Basic ")  # the credential was really used
        srv.script(*[auth_error(echo_key=True)] * 3)  # a server that echoes the credential in its error message
        with pytest.raises(SynthError) as err:
            run(make_params(tmp_path, "openai", base_url, n=8), tmp_path, seeds, benchmarks, out="out2")
    assert report["accepted"] == 4 and "401" in str(err.value) and canary not in str(err.value)
    out, errout = capfd.readouterr()
    blobs = [_all_text(tmp_path), caplog.text, out, errout, json.dumps(report)]
    con = sqlite3.connect(mlflow_store.removeprefix("sqlite:///"))
    for table in ("params", "tags", "metrics", "runs", "experiments"):
        blobs.append(json.dumps(con.execute(f"SELECT * FROM {table}").fetchall(), default=str))  # noqa: S608
    metrics = dict(con.execute("SELECT key, value FROM latest_metrics").fetchall())
    params_logged = dict(con.execute("SELECT key, value FROM params").fetchall())
    con.close()
    assert not [b[:200] for b in blobs if canary in b or CANARY in b]
    assert "HTTP Request: POST http://127.0.0.1" in caplog.text  # httpx2's request log (it printed user:pass@ URLs in clear)
    assert metrics["synth/accepted"] == 4 and metrics["synth/rare_ratio_target"] == 0 and "synth/tokens_per_accepted_question/total" in metrics and "synth/tokens_per_question" not in metrics
    assert params_logged["synth.n"] == "4" and params_logged["synth.generator.base_url"] == srv.base_url


# -- crash-resume in a real subprocess -----------------------------------------------------------------------
def _project(tmp: Path, base_url: str, seeds, benchmarks, n: int) -> tuple[Path, dict]:
    (tmp / "prepared" / "benchmarks").mkdir(parents=True)
    write_jsonl(tmp / "prepared" / "seeds.jsonl", seeds)
    write_jsonl(tmp / "prepared" / "entities.jsonl", [{"name": "Fabry disease"}])
    for name, qs in benchmarks.items():
        write_jsonl(tmp / "prepared" / "benchmarks" / f"{name}.jsonl", qs)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())  # a params file is whole: the shipped one, changed
    params["project"]["experiment"] = "synth-crash"
    params["synth"].update(n=n, rare_ratio=0.0, seed=5, cache_dir=str(tmp / "cache"), prompt_variant="", max_usd=None, max_attempts=None)
    params["synth"]["generator"].update(backend="openai", model="fake-model", base_url=base_url, concurrency=2, max_retries=2,
                                        structured=True, guided_layout=False)
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "OPENAI_API_KEY": CANARY, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db", "MEDSSR_ROOT": str(tmp)}
    return tmp, env


def _stage(tmp: Path, env: dict) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "stages" / "synthesize.py"), "--params", str(tmp / "params.yaml"), "--prepared", str(tmp / "prepared"),
           "--corpus", str(tmp / "corpus"), "--out", str(tmp / "synthetic" / "questions.jsonl"), "--report", str(tmp / "synth.json"),
           "--metrics", str(tmp / "metrics" / "synth.json"), "--no-progress-bar"]
    return subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigkill_mid_run_then_rerun_gives_the_uninterrupted_file_without_repeating_finished_requests(tmp_path, openai_key, seeds, benchmarks):
    n = 10
    with FakeOpenAIServer(responder=fake_question, latency_s=0.4) as srv:
        tmp, env = _project(tmp_path / "crash", srv.base_url, seeds, benchmarks, n)
        progress = tmp / "synthetic" / "questions.progress.jsonl"
        proc = _stage(tmp, env)
        deadline = time.time() + 120
        while len(read_partial_jsonl(progress)) < 4 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL, proc.stdout.read()
        finished_attempts = {r["attempt"] for r in read_partial_jsonl(progress)}
        assert 4 <= len(finished_attempts) < n
        sent_before_kill = len(srv.requests)
        rerun = _stage(tmp, env)
        log, _ = rerun.communicate(timeout=180)
        assert rerun.returncode == 0, log
        assert "synthesize: 10/10 questions" in log and CANARY not in log
        after = {r.last_user for r in srv.requests[sent_before_kill:]}
    # prompts of the attempts finished before the kill, rebuilt from the plan
    prompts = {k: load_prompt(PROMPT_NAMES[k]) for k in ("F1", "F2")}
    finished_prompts = {build_request(plan_attempt(i, 5, 0.0, len(seeds), []), seeds, prompts, None, 4, True)[0].messages[0][1]
                        for i in finished_attempts}
    assert not finished_prompts & after
    # the uninterrupted reference, in-process (the stage script is a thin wrapper around these two calls)
    with FakeOpenAIServer(responder=fake_question) as srv2:
        clean, _ = _project(tmp_path / "clean", srv2.base_url, seeds, benchmarks, n)
        params = load_params(clean / "params.yaml")
        run_synthesize(params, load_inputs(clean / "prepared", clean / "corpus"), clean / "synthetic" / "questions.jsonl", track=False,
                       show_progress=False)
    assert (tmp / "synthetic" / "questions.jsonl").read_bytes() == (clean / "synthetic" / "questions.jsonl").read_bytes()
    assert CANARY not in _all_text(tmp)


# -- classifiers through a real client -------------------------------------------------------------------------
def test_llm_classifiers_parse_strictly_through_the_openai_client(tmp_path, openai_key, benchmarks):
    qs = benchmarks["medqa"][:6]

    def answer(req) -> str:
        q = req.last_user.split("Question:\n", 1)[-1]
        if "Determine if this medical question requires" in req.last_user:
            return "<Reasoning>" if "most likely" in q.lower() else ("I think it is <Memorization>" if "year-old" in q else "unsure")
        return ["Category: Treatment", "Diagnosis", "Category: Therapy"][len(q) % 3]

    with FakeOpenAIServer(responder=answer) as srv:
        gen = make_generator(GeneratorCfg(backend="openai", model="fake-model", base_url=srv.base_url, max_retries=0), tmp_path / "c")
        labels = classify_reasoning(qs, gen, progress=False)
        cats = classify_category(qs, gen, progress=False)
        assert len(srv.requests) == 12 and all(r.schema is None for r in srv.requests)
    expected = [True if "most likely" in q.render().lower() else (False if "year-old" in q.render() else None) for q in qs]
    assert labels == expected
    assert set(cats) <= {"Treatment", "Diagnosis", None}
    sent = [r.last_user for r in srv.requests[:6]]  # arrival order is not question order (concurrent workers)
    assert all(any(u.endswith("Question:\n" + q.render()) for u in sent) for q in qs)


# -- batch endpoints (#17.3) and tokens per accepted question (#17.4) --------------------------------------------
BATCH_PRICES = {"fake-model": PriceCfg(input_per_mtok=2.0, output_per_mtok=8.0, batch_discount=0.5)}


@pytest.mark.parametrize("server", [FakeOpenAIServer, FakeAnthropicServer])
def test_batch_synthesis_writes_the_synchronous_questions_at_the_batch_price(tmp_path, openai_key, anthropic_key, seeds, benchmarks, server):
    backend = "openai" if server is FakeOpenAIServer else "anthropic"
    with server(responder=fake_question, batch_polls=2) as srv:
        sync = run(make_params(tmp_path / "s", backend, srv.base_url, n=6, prices=BATCH_PRICES), tmp_path, seeds, benchmarks, out="sync")
        params = make_params(tmp_path / "b", backend, srv.base_url, n=6, prices=BATCH_PRICES,
                             generator={"batch": True, "batch_poll_s": 0.05})
        batch = run(params, tmp_path, seeds, benchmarks, out="batch")
        assert srv.batch_creates == 1  # one round: the wave covers every question still needed
    assert read_questions(tmp_path / "batch" / "questions.jsonl") == read_questions(tmp_path / "sync" / "questions.jsonl")
    assert batch["accepted"] == 6 and batch["attempts"] == sync["attempts"] == 6
    assert batch["cost_usd"] == pytest.approx(sync["cost_usd"] / 2) and sync["cost_usd"] > 0
    assert batch["tokens_per_accepted_question"] == sync["tokens_per_accepted_question"]
    tpq = batch["tokens_per_accepted_question"]
    assert tpq["total"] == pytest.approx(tpq["input"] + tpq["output"], abs=0.11) and tpq["output"] > 0
    assert tpq["input"] == pytest.approx(batch["tokens"]["input"] / 6, abs=0.05) and batch["batch_failures"] == []
    assert "per_question" not in batch["tokens"] and batch["tokenizer"] and batch["batch"] and not sync["batch"]


def test_tokens_per_accepted_question_counts_rejected_attempts_too(tmp_path, openai_key, seeds, benchmarks):
    with FakeOpenAIServer(responder=fake_question) as srv:
        srv.script(reply("not a question at all"), reply("nor this one"))
        report = run(make_params(tmp_path, "openai", srv.base_url, n=4), tmp_path, seeds, benchmarks)
    assert report["attempts"] == 6 and report["accepted"] == 4
    tpq = report["tokens_per_accepted_question"]
    assert tpq["input"] == round(report["tokens"]["input"] / 4, 1) and tpq["output"] == round(report["tokens"]["output"] / 4, 1)
    assert f"{tpq['total']:.0f} tok/q" in summary_line(report)


def test_failed_batch_items_stop_the_run_listed_with_their_custom_id_and_the_rerun_resends_only_them(tmp_path, openai_key, seeds,
                                                                                                   benchmarks):
    failed_once: set[str] = set()

    def rule(item):
        if "year-old" in item.last_user and len(failed_once) < 2 and item.last_user not in failed_once:
            failed_once.add(item.last_user)
            return "errored" if len(failed_once) == 1 else "expired"
        return None

    with FakeOpenAIServer(responder=fake_question, batch_rule=rule, batch_error="Invalid request (key {authorization})") as srv:
        params = make_params(tmp_path, "openai", srv.base_url, n=6, generator={"batch": True, "batch_poll_s": 0.05})
        with pytest.raises(SynthError, match="2 request"):
            run(params, tmp_path, seeds, benchmarks)
        failure = json.loads((tmp_path / "out" / "synth.json").read_text())
        assert [f["kind"] for f in failure["batch_failures"]] == ["batch_errored", "batch_expired"]
        assert all(len(f["custom_id"]) == 64 and f["batch_id"] == "batch_fake1" for f in failure["batch_failures"])
        assert failure["faults"]["batch_errored"] == 1 and failure["faults"]["batch_expired"] == 1
        report = run(params, tmp_path, seeds, benchmarks)
        assert report["accepted"] == 6 and srv.batch_creates == 2 and len(srv.batch_items) == 6 + 2
        assert report["resumed_from_progress"] == 4
    assert CANARY not in _all_text(tmp_path) and "Invalid request (key" in json.dumps(failure)


def test_sigkill_between_batch_create_and_collect_then_rerun_collects_the_same_batch(tmp_path, openai_key, seeds, benchmarks):
    """The issue's check (#17.3): a batch synthesis survives a kill between create and collect without resubmitting."""
    n = 6
    with FakeOpenAIServer(responder=fake_question, batch_polls=10**9) as srv:  # the batch runs until the first process is gone
        tmp, env = _project(tmp_path / "crash", srv.base_url, seeds, benchmarks, n)
        params = yaml.safe_load((tmp / "params.yaml").read_text())
        params["synth"]["generator"].update(batch=True, batch_poll_s=0.05)
        (tmp / "params.yaml").write_text(yaml.safe_dump(params))
        proc = _stage(tmp, env)
        deadline = time.time() + 120
        while srv.batch_polls_seen < 2 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL, proc.stdout.read()
        assert srv.batch_creates == 1 and list((tmp / "cache" / "batches").iterdir())
        srv.batch_polls = 0  # the provider finished the batch meanwhile
        rerun = _stage(tmp, env)
        log, _ = rerun.communicate(timeout=180)
        assert rerun.returncode == 0, log
        assert srv.batch_creates == 1 and f"synthesize: {n}/{n} questions" in log and CANARY not in log
    assert len(read_questions(tmp / "synthetic" / "questions.jsonl")) == n
    assert not list((tmp / "cache" / "batches").iterdir()) and CANARY not in _all_text(tmp)


def test_llm_classifiers_through_message_batches_give_the_synchronous_labels(tmp_path, anthropic_key, benchmarks):
    qs = benchmarks["medqa"][:5]

    def answer(req) -> str:
        return "<Reasoning>" if len(req.last_user) % 2 else "<Memorization>"

    with FakeAnthropicServer(responder=answer) as srv:
        cfg = GeneratorCfg(backend="anthropic", model="fake-model", base_url=srv.base_url, max_retries=0)
        sync = classify_reasoning(qs, make_generator(cfg, tmp_path / "s"), progress=False)
        batched = classify_reasoning(qs, make_generator(dataclasses.replace(cfg, batch=True, batch_poll_s=0.05), tmp_path / "b"),
                                     progress=False)
        assert srv.batch_creates == 1 and len(srv.batch_items) == 5
    assert batched == sync and None not in sync


# -- the local backend -----------------------------------------------------------------------------------------
def test_local_backend_runs_the_stage_and_counts_rejections(tmp_path, tiny_model_dir, seeds, benchmarks):
    """A tiny random Llama writes gibberish: every attempt is rejected by reason, nothing crashes, the cap stops it."""
    params = make_params(tmp_path, "local", None, n=2, max_attempts=3,
                         generator={"model": str(tiny_model_dir), "max_tokens": 24, "concurrency": 3, "guided_layout": False})
    gen = make_generator(params.synth.generator, params.synth.cache_dir, model_dir=str(tiny_model_dir))
    report = run(params, tmp_path, seeds[:10], {}, generator=gen, prompt_variant="small")
    assert report["stopped"] == "max_attempts" and report["attempts"] == 3 and report["accepted"] == 0
    assert sum(report["rejected"].values()) == 3 and report["cost_usd"] == 0.0
    assert read_questions(tmp_path / "out" / "questions.jsonl") == []


@pytest.mark.slow
def test_local_smollm2_generates_and_is_measured(tmp_path, smol_model_dir, seeds, benchmarks):
    """The embedded default generator end to end with the small-model prompts (2 attempts; acceptance is measured
    by a script: too slow for a test on 2 shared cores)."""
    params = make_params(tmp_path, "local", None, n=2, max_attempts=2,
                         generator={"model": "smollm2-135m", "max_tokens": 160, "concurrency": 2, "structured": False, "guided_layout": True})
    report = run(params, tmp_path, seeds[:20], {}, prompt_variant="small")
    assert report["attempts"] == 2 and report["tokens"]["output"] > 0
    assert report["generator"] == "local:smollm2-135m"
    assert sum(report["rejected"].values()) + report["valid"] == 2
    # guided decoding: whatever is wrong with a reply, it is never its layout
    assert not set(report["rejected"]) & {"no_question_format", "missing_answer", "option_count", "bad_json", "empty"}


# -- the measured rare-disease share (#22.5) -------------------------------------------------------------------
F2_DISEASE = re.compile(r"The following medical knowledge about (.+?) can be used:")


def rare_aware(f1_names: list[str], f1_rate: float = 0.35, f2_rate: float = 0.7):
    """A generator that, like a real one, names the injected disease in most F.2 questions (not all: "if it is useful")
    and a rare disease in some F.1 questions on its own (the paper's 13 % natural share at α = 0)."""

    def respond(req) -> str:
        r = random.Random(hashlib.sha256(req.last_user.encode()).hexdigest())
        q = json.loads(fake_question(req))
        m = F2_DISEASE.search(req.last_user)
        disease = (m.group(1) if r.random() < f2_rate else None) if m else (r.choice(f1_names) if r.random() < f1_rate else None)
        if disease:
            q["question"] = q["question"].replace("has ", f"with {disease} has ", 1)
        return json.dumps(q)

    return respond


@pytest.fixture(scope="module")
def e_rare():
    """E_rare as prepare builds it (Orphanet + GARD, data.rare_gard) and the benchmark tagger over it."""
    from medssr.data.rare import build_tagger, load_entities

    records = load_entities(RAW)
    return records, build_tagger(records, min_len=5)


def _tag(q, tagger):
    from medssr.data.rare import tag_question

    return tag_question(dataclasses.replace(q, answer=q.meta["generator_answer"]), tagger, "all").name


def test_the_reported_rare_share_is_the_benchmark_taggers_not_the_f2_share(tmp_path, openai_key, seeds, benchmarks, knowledge, e_rare):
    records, tagger = e_rare
    with FakeOpenAIServer(responder=rare_aware(knowledge[0])) as srv:
        report = run(make_params(tmp_path, "openai", srv.base_url, n=16, rare_ratio=0.5), tmp_path, seeds, benchmarks, knowledge,
                     records=records)
    qs = read_questions(tmp_path / "out" / "questions.jsonl")
    tags = [_tag(q, tagger) for q in qs]
    assert [q.meta["rare_tagged"] for q in qs] == tags  # every question carries the tag RareDis-Sub's tagger gives it
    assert report["rare_share_measured"] == round(sum(t is not None for t in tags) / 16, 4)
    assert report["f2_share"] == round(sum(q.meta["prompt_kind"] == "F2" for q in qs) / 16, 4)
    # F.1 questions name rare diseases, some F.2 ones do not: the two shares count different questions
    assert {q.id for q, t in zip(qs, tags, strict=True) if t} != {q.id for q in qs if q.meta["prompt_kind"] == "F2"}
    assert report["rare_share"]["by_kind"]["F1"]["tagged"] > 0 and "rare share" in summary_line(report)


def test_target_share_zero_uses_f1_only_and_drops_and_counts_f1_questions_naming_a_rare_disease(tmp_path, openai_key, seeds,
                                                                                               benchmarks, knowledge, e_rare):
    records, tagger = e_rare
    with FakeOpenAIServer(responder=rare_aware(knowledge[0], f1_rate=0.4)) as srv:
        params = make_params(tmp_path, "openai", srv.base_url, n=10, rare_ratio=0.5, rare_share_target=0.0)
        report = run(params, tmp_path, seeds, benchmarks, records=records)  # no retriever: F.2 is never planned
        assert not any("MEDICAL KNOWLEDGE CONTEXT" in r.last_user for r in srv.requests)
    qs = read_questions(tmp_path / "out" / "questions.jsonl")
    assert len(qs) == 10 and report["stopped"] == "done" and report["rare_share_measured"] == 0.0
    assert all(q.meta["rare_tagged"] is None and _tag(q, tagger) is None for q in qs)
    assert report["prompt_kinds"] == {"F1": report["attempts"]} and report["alpha_used"] == 0.0
    dropped = report["share_dropped"]
    assert dropped["rare_in_f1"] > 0 and dropped["rare_in_f2"] == 0
    assert report["valid"] - report["contamination_dropped"] - sum(dropped.values()) == 10  # every valid question accounted for


def test_target_share_half_is_met_by_steering_alpha_and_the_quotas(tmp_path, openai_key, seeds, benchmarks, knowledge, e_rare):
    records, tagger = e_rare
    with FakeOpenAIServer(responder=rare_aware(knowledge[0], f1_rate=0.15, f2_rate=0.8)) as srv:
        params = make_params(tmp_path, "openai", srv.base_url, n=20, rare_ratio=0.0, rare_share_target=0.5, generator={"concurrency": 4})
        report = run(params, tmp_path, seeds, benchmarks, knowledge, records=records)
    qs = read_questions(tmp_path / "out" / "questions.jsonl")
    assert len(qs) == 20 and report["stopped"] == "done"
    assert sum(_tag(q, tagger) is not None for q in qs) == 10 and report["rare_share_measured"] == 0.5
    assert 0 < report["alpha_used"] < 1 and report["prompt_kinds"]["F2"] > 0  # rare_ratio 0 is not what steered
    assert len(report["rare_share"]["alpha_per_wave"]) > 1  # α followed the counts


def test_a_steered_run_resumed_after_failures_equals_the_uninterrupted_one(tmp_path, openai_key, seeds, benchmarks, knowledge, e_rare):
    records, _ = e_rare
    respond = rare_aware(knowledge[0], f1_rate=0.15, f2_rate=0.8)
    served = {"n": 0}

    def fail_after_nine(req):
        served["n"] += 1
        return server_error(503) if served["n"] > 9 else None

    def params_at(root: Path, url: str) -> Params:
        return make_params(root, "openai", url, n=12, rare_share_target=0.25, generator={"concurrency": 3, "max_retries": 0})

    with FakeOpenAIServer(responder=respond, rule=fail_after_nine) as srv:
        with pytest.raises(SynthError):
            run(params_at(tmp_path, srv.base_url), tmp_path, seeds, benchmarks, knowledge, records=records)
    with FakeOpenAIServer(responder=respond) as srv:  # an empty response cache: the progress file alone resumes
        resumed = run(params_at(tmp_path / "fresh", srv.base_url), tmp_path, seeds, benchmarks, knowledge, records=records)
        clean = run(params_at(tmp_path / "clean", srv.base_url), tmp_path, seeds, benchmarks, knowledge, out="clean", records=records)
    assert resumed["resumed_from_progress"] == 9 and resumed["rare_share_measured"] == clean["rare_share_measured"] == 0.25
    assert resumed["rare_share"]["alpha_per_wave"] == clean["rare_share"]["alpha_per_wave"]
    assert (tmp_path / "out" / "questions.jsonl").read_bytes() == (tmp_path / "clean" / "questions.jsonl").read_bytes()


def _typos(text: str, every: int = 6) -> str:
    """The text with one letter changed in every ``every``-th word: no 8-gram survives, the wording barely moves."""
    out = []
    for i, w in enumerate(text.split(" ")):
        out.append(w[:-1] + ("x" if w[-1:] != "x" else "y") if i % every == 0 and len(w) > 3 else w)
    return " ".join(out)


def test_reworded_copies_are_dropped_as_near_duplicates_where_ngrams_miss_them(tmp_path, openai_key, seeds, benchmarks):
    """Issue 23.3: a benchmark question and an accepted question, each re-typed a little, are near-duplicates."""
    from medssr.synth.contamination import build_index, question_text

    bench_q = benchmarks["medqa"][7]
    near = {"question": _typos(bench_q.question), "options": {k: _typos(v, 2) for k, v in bench_q.options.items()}, "answer": "A"}
    first = json.loads(fake_question(type("R", (), {"last_user": "dup-base"})()))
    again = {"question": _typos(first["question"], 5), "options": first["options"], "answer": first["answer"]}
    ngram = build_index(benchmarks, [], seeds)
    assert ngram.match(near["question"] + " " + " ".join(near["options"].values())) is None, "the n-gram filter already catches it"
    assert question_text(bench_q)
    with FakeOpenAIServer(responder=fake_question) as srv:
        srv.script(reply(json.dumps(near)), reply(json.dumps(first)), reply(json.dumps(again)))
        params = make_params(tmp_path, "openai", srv.base_url, n=4, generator={"concurrency": 1})
        report = run(params, tmp_path, seeds, benchmarks)
    assert report["near_duplicates"] == {"by_group": {"medqa": 1, "synthetic": 1}, "threshold": 95.0}
    assert report["near_duplicates_dropped"] == 2 and report["contamination_dropped"] == 0 and report["accepted"] == 4
    texts = {q.question for q in read_questions(tmp_path / "out" / "questions.jsonl")}
    assert first["question"] in texts and again["question"] not in texts and near["question"] not in texts


def test_near_duplicate_removal_off_keeps_them(tmp_path, openai_key, seeds, benchmarks):
    first = json.loads(fake_question(type("R", (), {"last_user": "dup-base"})()))
    again = {"question": _typos(first["question"], 5), "options": first["options"], "answer": first["answer"]}
    with FakeOpenAIServer(responder=fake_question) as srv:
        srv.script(reply(json.dumps(first)), reply(json.dumps(again)))
        params = make_params(tmp_path, "openai", srv.base_url, n=2, generator={"concurrency": 1}, dedup_threshold=None)
        report = run(params, tmp_path, seeds, benchmarks)
    assert report["near_duplicates_dropped"] == 0 and report["accepted"] == 2
