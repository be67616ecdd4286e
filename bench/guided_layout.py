"""Guided layout decoding vs free decoding for the embedded local generator (SmolLM2-135M, small prompts).

Same attempts (rare_ratio 0, so no corpus is needed), same seeds, cold cache each: how many replies have the
question layout, how many questions are accepted, and the seconds per attempt. Reads data/prepared (runs the
prepare stage first if it is missing).

    .venv/bin/python bench/guided_layout.py [--attempts 16] [--max-tokens 384]
Writes bench/results/guided_layout.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medssr.config import load_params, set_offline_env  # noqa: E402

LAYOUT_REASONS = {"no_question_format", "missing_answer", "option_count", "bad_json", "empty", "truncated"}


def run_one(params, inputs, guided: bool, attempts: int, max_tokens: int) -> dict:
    from medssr.synth.run import run_synthesize

    gen = dataclasses.replace(params.synth.generator, guided_layout=guided, max_tokens=max_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        synth = dataclasses.replace(params.synth, n=attempts, max_attempts=attempts, rare_ratio=0.0, generator=gen, cache_dir=f"{tmp}/cache")
        p = dataclasses.replace(params, synth=synth)
        t0 = time.perf_counter()
        rep = run_synthesize(p, inputs, f"{tmp}/q.jsonl", f"{tmp}/r.json", show_progress=False, track=False)
        dt = time.perf_counter() - t0
    layout_broken = sum(v for k, v in rep["rejected"].items() if k in LAYOUT_REASONS)
    return {"guided": guided, "attempts": rep["attempts"], "accepted": rep["accepted"], "valid": rep["valid"],
            "layout_ok": rep["attempts"] - layout_broken, "rejected": rep["rejected"], "contamination_dropped": rep["contamination_dropped"],
            "seconds": round(dt, 1), "s_per_attempt": round(dt / max(1, rep["attempts"]), 2), "output_tokens": rep["tokens"]["output"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--attempts", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=384)
    args = ap.parse_args()
    set_offline_env()
    params = load_params(ROOT / "params.yaml")
    prepared = ROOT / params.data.out_dir
    if not (prepared / "seeds.jsonl").exists():
        subprocess.run([sys.executable, "-m", "dvc", "repro", "prepare"], cwd=ROOT, check=True)  # as dvc.yaml runs it (its cmd has the paths)
    from medssr.synth.run import load_inputs

    inputs = load_inputs(prepared, ROOT / params.corpus.index_dir)
    rows = [run_one(params, inputs, g, args.attempts, args.max_tokens) for g in (False, True)]
    free, guided = rows
    print(f"{'decoding':10s} {'layout ok':>10s} {'valid':>6s} {'accepted':>9s} {'s/attempt':>10s}")
    for r in rows:
        print(f"{'guided' if r['guided'] else 'free':10s} {r['layout_ok']:>4d}/{r['attempts']:<5d} {r['valid']:>6d} {r['accepted']:>9d} {r['s_per_attempt']:>10.2f}")
    ratio = guided["accepted"] / free["accepted"] if free["accepted"] else float("inf")
    print(f"accepted: guided {guided['accepted']} vs free {free['accepted']} ({ratio:.1f}x); "
          f"time per attempt {guided['s_per_attempt'] / free['s_per_attempt']:.2f}x")
    out = ROOT / "bench" / "results" / "guided_layout.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": platform.platform(), "model": params.synth.generator.model, "runs": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
