"""Seconds and peak memory per GRPO step on the embedded profile, split into generation and policy update.

TRL GRPOTrainer (our trl_backend, the code the `stage1` stage runs) on real MedMCQA prompts with the F.4 prompt,
G rollouts of at most --max-new tokens per prompt (defaults: params.yaml's train settings). Each model and rollout
sampler runs in its own subprocess so peak RSS is its own. ``--rollouts trl,hf`` runs both side by side: TRL's own
``generate`` and medssr's sampler (``train.rollout_sampler``, medssr/rl/rollouts.py), same data, settings and seed;
the ratio row is TRL's step time over ours. A ``+grouped`` variant (``--variants trl,hf,hf+grouped``, the default)
also scores the policy's and reference's log-probs with each prompt once per group (medssr/rl/grouped_logps.py); the
others keep TRL's one forward per rollout, so ``trl`` is TRL's default generation + update. ``generation_s`` is measured around TRL's ``_generate``; ``update_s`` =
step time - generation (log-probs of policy and reference, loss, backward, optimizer). The first step carries
warm-up, so the table reports the median of the later steps.

    python bench/train_step.py                       # SmolLM2-135M and the tiny test model, trl / hf / hf+grouped, 4 steps each
    python bench/train_step.py --models smollm2-135m --variants trl,hf+grouped
    python bench/train_step.py --models smollm2-135m --steps 6 --max-new 32 --rollouts trl
    OMP_WAIT_POLICY=PASSIVE python bench/train_step.py   # on a busy machine (see the note below)

On a shared machine, torch's default OpenMP spin-waiting makes a 2-thread process ~9x slower when the cores are
oversubscribed (measured here: SmolLM2 generating 4 x 32 tokens took 72-98 s spinning, 11 s with
OMP_WAIT_POLICY=PASSIVE, 8 s with one thread); the JSON records the policy and the load average.

Writes bench/results/train_step.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def embedded_settings() -> dict:
    """params.yaml's train settings the bench defaults to: G, max completion tokens, prompts per step, stage-I beta."""
    from medssr.config import load_params

    t = load_params(ROOT / "params.yaml").train
    return {"generations": t.num_generations, "max_new": t.max_completion_length, "beta": t.stage1.beta,
            "prompts_per_step": max(1, t.per_device_batch_size * t.gradient_accumulation_steps // t.num_generations)}


def one(model: str, steps: int, max_new: int, generations: int, prompts_per_step: int, beta: float, rollout: str = "trl",
        grouped: bool = False) -> dict:
    """Train ``steps`` GRPO steps in this process and return per-step rows plus a summary."""
    from medssr.config import load_params, set_offline_env

    set_offline_env()
    t_import = time.time()
    import torch

    from medssr.data.loaders import load_medmcqa
    from medssr.models import resolve_model_dir, save_tiny_llama
    from medssr.rl import trl_backend
    from medssr.rl.data import examples_from_questions, load_prompt_template, to_trl_dataset

    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    model_dir = str(save_tiny_llama(tmp / "tiny")) if model == "tiny" else resolve_model_dir(model)
    examples, _ = examples_from_questions(load_medmcqa(ROOT / "data" / "raw")[: steps * prompts_per_step], "real")
    dataset = to_trl_dataset(examples, load_prompt_template())
    params = load_params(ROOT / "params.yaml", {
        "train.num_generations": generations, "train.per_device_batch_size": generations * prompts_per_step,
        "train.gradient_accumulation_steps": 1, "train.max_completion_length": max_new, "train.save_steps": 10_000,
        "train.stage1": {"max_steps": steps, "learning_rate": 2e-6, "beta": beta, "max_samples": None},
    })
    setup_s = time.time() - t_import
    t0 = time.time()
    result = trl_backend.train(model_dir, dataset, "gold", params.train, params.train.stage1, stage="stage1", run_dir=tmp / "run",
                               out_dir=tmp / "out", rollout_sampler=rollout, grouped_logps=grouped)
    total_s = time.time() - t0
    rows = [{k: h[k] for k in ("step", "step_time_s", "generation_s", "update_s", "tokens_per_s", "completion_length", "peak_rss_mb")
             if k in h} for h in result["history"]]
    later = rows[1:] or rows
    med = {k: statistics.median(r[k] for r in later) for k in ("step_time_s", "generation_s", "update_s", "tokens_per_s", "completion_length")}
    n_params = sum(p.numel() for p in __import__("transformers").AutoModelForCausalLM.from_pretrained(model_dir).parameters())
    return {
        "model": model, "variant": result["rollout_sampler"] + ("+grouped" if grouped else ""), "rollout_sampler": result["rollout_sampler"],
        "grouped_logps": grouped, "params_m": round(n_params / 1e6, 2), "steps": steps, "generations": generations, "prompts_per_step": prompts_per_step,
        "max_new_tokens": max_new, "beta": beta, "device": "cuda" if torch.cuda.is_available() else "cpu", "torch_threads": torch.get_num_threads(),
        "median_step_s": round(med["step_time_s"], 3), "median_generation_s": round(med["generation_s"], 3),
        "median_update_s": round(med["update_s"], 3), "generation_share": round(med["generation_s"] / med["step_time_s"], 3),
        "median_tokens_per_s": round(med["tokens_per_s"], 2), "median_completion_length": round(med["completion_length"], 1), "peak_rss_mb": round(max(r["peak_rss_mb"] for r in rows), 1),
        "trainer_total_s": round(total_s, 1), "setup_s": round(setup_s, 1), "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2-135m,tiny")
    ap.add_argument("--variants", default="trl,hf,hf+grouped",
                    help="rollout sampler (trl: TRL's generate, hf: medssr's sampler), +grouped: prompts once per group in the update")
    ap.add_argument("--rollouts", help="old spelling of --variants without +grouped")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--max-new", type=int, help="max completion tokens (default: params.yaml train.max_completion_length)")
    ap.add_argument("--generations", type=int, help="G (default: params.yaml train.num_generations)")
    ap.add_argument("--prompts-per-step", type=int, help="default: params.yaml per_device_batch_size x accumulation / G")
    ap.add_argument("--beta", type=float, help="KL coefficient (default: params.yaml stage1 beta; > 0 loads the reference model)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--rollout", default="trl", help=argparse.SUPPRESS)
    ap.add_argument("--grouped", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_step.json"))
    a = ap.parse_args()
    embedded = embedded_settings()
    for k in ("max_new", "generations", "prompts_per_step", "beta"):
        if getattr(a, k) is None:
            setattr(a, k, embedded[k])
    if a.one:
        print("RESULT " + json.dumps(one(a.one, a.steps, a.max_new, a.generations, a.prompts_per_step, a.beta, a.rollout, a.grouped)))
        return
    variants = (a.rollouts or a.variants).split(",")
    results = []
    for model in a.models.split(","):
        for variant in variants:
            rollout, _, update = variant.partition("+")
            cmd = [sys.executable, __file__, "--one", model, "--rollout", rollout, "--steps", str(a.steps), "--max-new", str(a.max_new),
                   "--generations", str(a.generations), "--prompts-per-step", str(a.prompts_per_step), "--beta", str(a.beta),
                   *(["--grouped"] if update == "grouped" else [])]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                sys.exit(f"{model} ({variant}): bench failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
            results.append(json.loads(line[len("RESULT "):]))
    ratios = {}
    for model in a.models.split(","):
        by = {r["variant"]: r for r in results if r["model"] == model}
        if "trl" in by:  # TRL's default generation + update over each other variant
            ratios[model] = {v: {k: round(by["trl"][k] / r[k], 2) for k in ("median_step_s", "median_generation_s", "median_update_s")}
                             for v, r in by.items() if v != "trl"}
    load = os.getloadavg()
    out = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_at_end": [round(x, 2) for x in load],
                       "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "(default: active)")},
           "note": "shared 2-core machine: other processes ran at the same time; see loadavg", "results": results,
           "ratio_trl_over_variant": ratios}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    print(f"{'model':14} {'variant':10} {'params':>7} {'G':>2} {'new':>4} {'len':>5} {'step s':>8} {'gen s':>7} {'update s':>9} {'gen %':>6} "
          f"{'tok/s':>7} {'peak MB':>8}")
    for r in results:
        print(f"{r['model']:14} {r['variant']:10} {r['params_m']:>6}M {r['generations']:>2} {r['max_new_tokens']:>4} "
              f"{r['median_completion_length']:>5.1f} {r['median_step_s']:>8.2f} {r['median_generation_s']:>7.2f} {r['median_update_s']:>9.2f} "
              f"{100 * r['generation_share']:>5.0f}% {r['median_tokens_per_s']:>7.1f} {r['peak_rss_mb']:>8.0f}")
    for model, by_variant in ratios.items():
        for v, q in by_variant.items():
            print(f"{model} {v}: step {q['median_step_s']:.2f}x faster than TRL's default (generation {q['median_generation_s']:.2f}x, "
                  f"update {q['median_update_s']:.2f}x)")
    print(f"load average at end {load[0]:.1f} on {os.cpu_count()} CPUs -> {a.out}")


if __name__ == "__main__":
    main()
