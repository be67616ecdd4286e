"""Synthesis throughput: how close the generator's concurrency gets to the ideal against a fixed-latency server.

64 requests to the loopback OpenAI-compatible server (200 ms per answer) through the real AsyncOpenAI client,
at concurrency 16 and 1, then again from the on-disk cache (must make zero calls). Ideal wall time is
ceil(n / concurrency) x latency; the goal is <= 1.3x ideal at concurrency 16.

    .venv/bin/python bench/synthesis.py [--n 64] [--latency 0.2] [--concurrency 16]
Writes bench/results/synthesis.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medssr.config import GeneratorCfg, PriceCfg  # noqa: E402
from medssr.llm import chat, make_generator  # noqa: E402
from tests.llm_servers import FakeOpenAIServer  # noqa: E402

GOAL = 1.3
SCHEMA = {"type": "object", "properties": {"question": {"type": "string"}, "options": {"type": "object"}, "answer": {"type": "string"}},
          "required": ["question", "options", "answer"], "additionalProperties": False}
PASSAGE = "Cystic fibrosis is an autosomal recessive disorder caused by mutations in the CFTR gene. " * 12


def requests(n: int) -> list:
    """Synthesis-sized prompts (a seed question plus retrieved passages), structured output requested."""
    return [chat(f"Seed question {i}: which test confirms the diagnosis?\n\nKnowledge:\n{PASSAGE}\n\nWrite one new question as JSON.",
                 system="You write medical multiple-choice questions.", json_schema=SCHEMA, nonce=str(i)) for i in range(n)]


class ServerHandle:
    """The fake server, in this process or a child process (so its threads don't compete with the client for the GIL)."""

    def __init__(self, base_url: str, local: FakeOpenAIServer | None = None):
        self.base_url, self.local = base_url, local

    def stats(self) -> dict:
        if self.local is not None:
            return self.local.stats()
        with urllib.request.urlopen(self.base_url.removesuffix("/v1") + "/_stats", timeout=10) as r:
            return json.loads(r.read())

    def reset(self) -> None:
        if self.local is not None:
            self.local.reset_stats()
        else:
            urllib.request.urlopen(self.base_url.removesuffix("/v1") + "/_reset", timeout=10).close()


@contextlib.contextmanager
def serve(latency: float, in_process: bool) -> Iterator[ServerHandle]:
    if in_process:
        with FakeOpenAIServer(latency_s=latency) as srv:
            yield ServerHandle(srv.base_url, srv)
        return
    proc = subprocess.Popen([sys.executable, "-m", "tests.llm_servers", "openai", "--latency", str(latency)], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        yield ServerHandle(proc.stdout.readline().strip())
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)


def run_case(srv: ServerHandle, cache_dir: Path, concurrency: int, n: int, latency: float, label: str) -> dict:
    cfg = GeneratorCfg(backend="openai_compatible", model="bench-model", base_url=srv.base_url, concurrency=concurrency,
                       max_retries=2, timeout_s=30.0)
    gen = make_generator(cfg, cache_dir, prices={"bench-model": PriceCfg(input_per_mtok=2.0, output_per_mtok=8.0)})
    srv.reset()
    reqs = requests(n)
    t0, c0 = time.perf_counter(), time.process_time()
    out = gen.run(reqs, progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    stats = srv.stats()
    calls = stats["calls"]
    cached = all(r.cached for r in out)
    ideal = 0.0 if cached else math.ceil(n / concurrency) * latency
    return {"case": label, "concurrency": concurrency, "requests": n, "server_calls": calls, "max_in_flight": stats["max_in_flight"],
            "failed": sum(not r.ok for r in out), "wall_s": round(wall, 3), "ideal_s": round(ideal, 3),
            "ratio": round(wall / ideal, 3) if ideal else None, "per_request_ms": round(1000 * wall / n, 3),
            "process_cpu_s": round(cpu, 3),  # client + server threads + cache writes, all in this process
            "spend_usd": round(gen.ledger.spend_usd, 6), "cache_hits": gen.ledger.cache_hits}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3, help="concurrency-N runs (fresh cache each); the median is the headline")
    ap.add_argument("--in-process", action="store_true", help="run the fake server in this process (shares the GIL)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "synthesis.json"))
    args = ap.parse_args(argv)
    rows = []
    with serve(args.latency, args.in_process) as srv, tempfile.TemporaryDirectory(prefix="bench-synth-") as tmp:
        # Warm-up (untimed): the SDK imports its resource modules lazily on the first call of a process.
        run_case(srv, Path(tmp) / "warmup", args.concurrency, args.concurrency, args.latency, "warm-up")
        par_rows = [run_case(srv, Path(tmp) / f"p{k}", args.concurrency, args.n, args.latency, f"concurrency {args.concurrency} #{k + 1}")
                    for k in range(args.repeats)]
        rows += par_rows
        ser = run_case(srv, Path(tmp) / "serial", 1, args.n, args.latency, "concurrency 1")
        cache = run_case(srv, Path(tmp) / "p0", args.concurrency, args.n, args.latency, "rerun from cache")
        rows += [ser, cache]
    par = sorted(par_rows, key=lambda r: r["wall_s"])[len(par_rows) // 2]
    summary = {"goal_ratio": GOAL, "meets_goal": par["ratio"] is not None and par["ratio"] <= GOAL,
               "speedup_vs_serial": round(ser["wall_s"] / par["wall_s"], 2), "cache_zero_calls": cache["server_calls"] == 0}
    result = {"bench": "synthesis", "latency_s": args.latency, "server": "in-process" if args.in_process else "child process", "rows": rows, "summary": summary,
              "machine": {"python": platform.python_version(), "platform": platform.platform()}, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}

    head = f"{'case':<20}{'conc':>5}{'calls':>7}{'in-flight':>10}{'wall s':>9}{'ideal s':>9}{'ratio':>7}{'ms/req':>9}{'cpu s':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
        print(f"{r['case']:<20}{r['concurrency']:>5}{r['server_calls']:>7}{r['max_in_flight']:>10}{r['wall_s']:>9.3f}"
              f"{r['ideal_s']:>9.2f}{ratio:>7}{r['per_request_ms']:>9.2f}{r['process_cpu_s']:>8.2f}")
    print(f"synthesis bench: concurrency {args.concurrency} at {par['ratio']:.2f}x ideal (median of {args.repeats}) (goal <= {GOAL}x: "
          f"{'met' if summary['meets_goal'] else 'NOT met'}), {summary['speedup_vs_serial']}x faster than serial, "
          f"cache rerun {cache['server_calls']} calls in {cache['wall_s']:.3f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
