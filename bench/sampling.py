"""Benchmark: our batched, stop-at-answer sampler vs a naive loop of ``model.generate`` calls, one sequence at a time.

Variants: ``ours`` (continuous batching + stop at answer; Llama-family models decode with our own step over a
shared-prefix KV cache), ``ours_generic`` (the same loop through transformers' forward with one KV copy per row: the
sampler before issue #16, still the path for other architectures), ``ours_static`` (static batches: finished rows are only
marked and ride along until the whole batch ends, as with generate()'s stopping criteria), ``ours_no_stop`` (continuous
batching, no early stop), ``naive`` (one model.generate call per sequence, no early stop), ``vllm`` (the vllm backend:
vLLM 0.32 in .venv-vllm behind the same sampler interface, early stop by its logits processor; run when
``.venv-vllm`` exists — ``make vllm-env``). vLLM's CPU time is spent in its worker processes, so its votes/cpu-s
is not measured (nan) and its peak RSS is only the caller's.

Same model, same F.4 prompts on real MedQA questions, same sampling settings (T=1.0, top-p 1.0, top-k off), same
thread count. Each variant runs in its own subprocess so its peak RSS (``ru_maxrss``) is its own. Votes/s is the
headline (a vote = one completion); the naive loop's cost per vote does not depend on G, so it is measured on
``--naive-n`` samples per question to keep the run short. Not a timed test: timings on a shared machine are noisy.

    python bench/sampling.py                   # SmolLM2-135M, 8 questions x G=8, 256 new tokens, 2 threads
    python bench/sampling.py --model tiny      # the tiny random Llama (plumbing check, seconds)
    python bench/sampling.py --profile         # adds a torch-profiler table per ours variant (a separate short run)
    python bench/sampling.py --questions 32 --batch-size 64   # issue #16: ours vs ours_generic vs naive vs vLLM-CPU

Writes bench/results/sampling.json and prints a table with the ratios (ours/naive goal: >= 4x votes/s; issue #16:
ours >= 2x vLLM-CPU votes/s at 32 questions x G=8 and >= 300 tokens/s). The naive loop runs on the first
``--naive-questions`` questions only (its cost per vote does not depend on how many there are).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _model_dir(name: str) -> str:
    from medssr.models import resolve_model_dir, save_tiny_llama

    if name == "tiny":
        d = ROOT / ".cache" / "models" / "tiny-random-llama"
        if not (d / "config.json").exists():
            save_tiny_llama(d)
        return str(d)
    return resolve_model_dir(name)


def _questions(k: int):
    from medssr.data.loaders import load_benchmark_file
    from medssr.synth.prompts import load_prompt

    qs = load_benchmark_file(ROOT / "data" / "raw" / "benchmarks" / "test_short_medqa.json.gz")[:k]
    tpl = load_prompt("eval_f4")
    return qs, [tpl.render(question=q.render()) for q in qs]


def _profile(sampler, prompts, opts, keys, args) -> str:
    """Where a decode step's time goes: torch-profiler table of a short extra run (8 questions, 64 new tokens)."""
    from torch.profiler import ProfilerActivity, profile

    k = min(8, len(prompts))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        sampler.sample(prompts[:k], n=args.g, temperature=1.0, max_new_tokens=64, options=opts[:k], keys=keys[:k], progress=False)
    st = sampler.last_stats
    head = (f"[{args.worker}] profile of {k} questions x G={args.g}, 64 new tokens: {st.seconds:.1f}s, {st.tokens} tokens, "
            f"{st.forward_passes} forward passes ({k} prefills), {st.rebuilds} rebuilds\n")
    return head + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=16)


def worker(args: argparse.Namespace) -> dict:
    """One variant in this process; returns its numbers (peak RSS included)."""
    import torch

    from medssr.answers import extract_answer
    from medssr.config import set_offline_env

    set_offline_env()
    torch.set_num_threads(args.threads)
    from medssr.config import SamplingCfg
    from medssr.sampling import HFSampler, make_sampler, resolve_sampling_dtype

    qs, prompts = _questions(args.questions)
    backend = "vllm" if args.worker == "vllm" else "hf"
    dtype = resolve_sampling_dtype(SamplingCfg(backend=backend, dtype=args.dtype), "float32")  # as the stages resolve it
    out: dict = {"variant": args.worker, "threads": args.threads, "dtype": dtype}
    if args.worker == "vllm":
        t0 = time.perf_counter()
        sampler = make_sampler(_model_dir(args.model), backend="vllm", dtype=dtype, batch_size=args.vllm_batch_size, seed=args.seed,
                               sampling=SamplingCfg(backend="vllm", max_new_tokens=args.max_new_tokens, dtype=dtype))
        out.update(engine_start_s=sampler.info["start_s"], ready_s=time.perf_counter() - t0)
    else:
        bs = args.generic_batch_size if args.worker == "ours_generic" and args.generic_batch_size else args.batch_size
        if args.engines > 1 and args.worker != "naive":  # sampling.engines: samplers side by side on prompt slices; the sampler
            # splits torch's threads between them while it samples (medssr.sampling.run_split), as the pipeline does
            sampler = make_sampler(_model_dir(args.model), dtype=dtype, batch_size=bs, seed=args.seed,
                                   sampling=SamplingCfg(engines=args.engines, dtype=dtype))
        else:
            sampler = HFSampler(_model_dir(args.model), dtype=dtype, batch_size=bs, seed=args.seed)
        shards = getattr(sampler, "shards", [sampler])
        out["fast_path"] = shards[0].decoder is not None and args.worker != "ours_generic"
        for s in shards:
            if args.worker == "ours_generic":
                s.decoder = None  # transformers' forward, one KV copy per row (the sampler before issue #16)
    opts = [q.options for q in qs]
    if args.worker in ("ours", "ours_generic", "ours_no_stop", "ours_static", "vllm"):
        stop_at_answer = args.worker != "ours_no_stop"
        if args.worker == "ours_static":
            for s in getattr(sampler, "shards", [sampler]):
                s.admit_fraction = 2.0  # finished rows stay in the batch until all its rows end (what generate() does)
        sampler.sample(prompts[:1], n=1, temperature=1.0, max_new_tokens=4, progress=False)  # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        res = sampler.sample(prompts, n=args.g, temperature=1.0, top_p=1.0, top_k=-1, max_new_tokens=args.max_new_tokens, options=opts,
                             keys=[q.id for q in qs], stop_at_answer=stop_at_answer, progress=False)
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
        st = sampler.last_stats
        if args.worker == "vllm":
            cpu = float("nan")  # spent in the engine's processes, not this one
            sampler.close()
        elif args.profile and args.worker in ("ours", "ours_generic"):
            out["profile"] = _profile(sampler, prompts, opts, [q.id for q in qs], args)
        texts, per_q = [c.text for cs in res for c in cs], args.g
        out.update(votes=len(texts), tokens=st.tokens, seconds=secs, cpu_seconds=cpu, forward_passes=st.forward_passes, rebuilds=st.rebuilds,
                   prefill_tokens=st.prefill_tokens, finish=st.finish, mean_batch=st.tokens / max(1, st.forward_passes - len(qs)))
    else:
        model, tok = sampler.model, sampler.tok
        torch.manual_seed(args.seed)
        ids = [tok(sampler.render(p), add_special_tokens=False, return_tensors="pt") for p in prompts[: args.naive_questions]]
        with torch.inference_mode():
            model.generate(**ids[0], max_new_tokens=4, do_sample=True)  # warm-up
            texts, tokens, per_q = [], 0, args.naive_n
            t0, c0 = time.perf_counter(), time.process_time()
            for q_ids in ids:
                for _ in range(args.naive_n):
                    o = model.generate(**q_ids, max_new_tokens=args.max_new_tokens, do_sample=True, temperature=1.0, top_p=1.0, top_k=0)
                    gen = o[0, q_ids["input_ids"].shape[1]:]
                    tokens += int(gen.shape[0])
                    texts.append(tok.decode(gen, skip_special_tokens=True))
            secs, cpu = time.perf_counter() - t0, time.process_time() - c0
        out.update(votes=len(texts), tokens=tokens, seconds=secs, cpu_seconds=cpu)
    valid = sum(extract_answer(t, qs[i // per_q].options) is not None for i, t in enumerate(texts))
    out.update(votes_per_s=out["votes"] / out["seconds"], tokens_per_s=out["tokens"] / out["seconds"],
               votes_per_cpu_s=out["votes"] / out["cpu_seconds"],
               mean_tokens_per_vote=out["tokens"] / out["votes"], valid_vote_rate=valid / len(texts),
               peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="'smollm2-135m' (default), 'tiny', or a model directory")
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--g", type=int, default=8, help="votes per question for our sampler")
    ap.add_argument("--naive-n", type=int, default=2, help="samples per question for the naive loop")
    ap.add_argument("--naive-questions", type=int, default=8, help="questions for the naive loop (the first ones)")
    ap.add_argument("--dtype", default="float32", choices=("auto", "float32", "bfloat16", "float16"),
                    help="sampling dtype for ours and vllm (sampling.dtype; auto: bfloat16 where this machine runs it faster)")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--generic-batch-size", type=int, default=0, help="batch for ours_generic (default --batch-size)")
    ap.add_argument("--vllm-batch-size", type=int, default=256, help="vLLM max_num_seqs (its own default)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--engines", type=int, default=1, help="ours variants: sampling.engines (threads split between them)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default=None, help="comma list of ours, ours_generic, ours_static, ours_no_stop, naive, vllm "
                    "(default ours,ours_generic,naive and vllm when .venv-vllm exists)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "sampling.json"))
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    base = [f"--model={args.model}", f"--questions={args.questions}", f"--g={args.g}", f"--naive-n={args.naive_n}",
            f"--naive-questions={args.naive_questions}", f"--dtype={args.dtype}",
            f"--max-new-tokens={args.max_new_tokens}", f"--batch-size={args.batch_size}", f"--generic-batch-size={args.generic_batch_size}", f"--vllm-batch-size={args.vllm_batch_size}", f"--threads={args.threads}", f"--engines={args.engines}", f"--seed={args.seed}"]
    base += ["--profile"] if args.profile else []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    if args.variants is None:
        from medssr.sampling import vllm_python

        args.variants = "ours,ours_generic,naive" + (",vllm" if vllm_python().exists() else "")
    results = {}
    load0 = os.getloadavg()
    for v in args.variants.split(","):
        print(f"[bench] running {v} ...", flush=True)
        p = subprocess.run([sys.executable, __file__, *base, "--worker", v], capture_output=True, text=True, env=env, cwd=ROOT)
        if p.returncode != 0:
            print(p.stderr[-3000:], file=sys.stderr)
            return 1
        results[v] = json.loads(p.stdout.strip().splitlines()[-1])
        if "profile" in results[v]:
            print(results[v]["profile"])
    cfg = {k: getattr(args, k) for k in ("model", "dtype", "questions", "g", "naive_n", "naive_questions", "max_new_tokens",
                                         "batch_size", "generic_batch_size", "vllm_batch_size", "threads", "engines", "seed")}
    summary = {"config": cfg, "cpu_count": os.cpu_count(), "load_avg_at_start": load0, "load_avg_at_end": os.getloadavg(),
               "results": results}
    if "ours" in results and "naive" in results:
        summary["votes_per_s_ratio"] = results["ours"]["votes_per_s"] / results["naive"]["votes_per_s"]
        summary["votes_per_cpu_s_ratio"] = results["ours"]["votes_per_cpu_s"] / results["naive"]["votes_per_cpu_s"]
        summary["goal"] = ">= 4x votes/s"
    if "ours" in results and "vllm" in results:
        summary["vllm_over_hf"] = {k: results["vllm"][k] / results["ours"][k] for k in ("votes_per_s", "tokens_per_s")}
        summary["ours_over_vllm"] = {k: results["ours"][k] / results["vllm"][k] for k in ("votes_per_s", "tokens_per_s")}
        summary["goal_issue_16"] = ">= 2x vLLM-CPU votes/s and >= 300 tokens/s at 32 questions x G=8"
    if "ours" in results and "ours_generic" in results:
        summary["ours_over_generic"] = {k: results["ours"][k] / results["ours_generic"][k] for k in ("votes_per_s", "tokens_per_s")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{'variant':<14}{'votes':>6}{'votes/s':>9}{'votes/cpu-s':>12}{'tokens/s':>9}{'tok/vote':>9}{'valid':>6}{'peak MiB':>9}"
          f"{'wall s':>8}{'cpu s':>8}")
    for v, r in results.items():
        print(f"{v:<14}{r['votes']:>6}{r['votes_per_s']:>9.3f}{r['votes_per_cpu_s']:>12.3f}{r['tokens_per_s']:>9.1f}"
              f"{r['mean_tokens_per_vote']:>9.1f}{r['valid_vote_rate']:>6.0%}{r['peak_rss_mib']:>9.0f}{r['seconds']:>8.1f}{r['cpu_seconds']:>8.1f}")
    if "votes_per_s_ratio" in summary:
        print(f"ratio ours/naive: {summary['votes_per_s_ratio']:.2f}x votes/s, {summary['votes_per_cpu_s_ratio']:.2f}x votes/cpu-s "
              f"(goal >= 4x); load average {summary['load_avg_at_end'][0]:.1f} on {os.cpu_count()} cores")
    if "ours_over_generic" in summary:
        r = summary["ours_over_generic"]
        print(f"ratio ours/ours_generic (before issue #16): {r['votes_per_s']:.2f}x votes/s, {r['tokens_per_s']:.2f}x tokens/s")
    if "ours_over_vllm" in summary:
        r = summary["ours_over_vllm"]
        print(f"ratio ours/vllm: {r['votes_per_s']:.2f}x votes/s, {r['tokens_per_s']:.2f}x tokens/s (goal >= 2x votes/s, >= 300 "
              f"tokens/s); vLLM engine start {results['vllm']['engine_start_s']:.0f}s (not in its rates)")
    print(f"load average {load0[0]:.1f} at start, {summary['load_avg_at_end'][0]:.1f} at end")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
