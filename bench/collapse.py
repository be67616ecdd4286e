"""Online vs offline voting (paper §4.4, Fig. 6): answer diversity per GRPO step, side by side, on SmolLM2-135M.

Both arms train from the same policy on the same questions in the same order with the same seed; only the reward
differs: ``offline`` rewards agreement with labels voted once by the base policy before training (MedSSR),
``online_vote`` with the majority of the current group of rollouts at every step (TTRL-style). The paper's collapse
shows as reward -> 1 while distinct answers and entropy fall and all_agree_share rises under online voting.
A 135M model over a few CPU steps is far from the paper's 8B over hundreds of steps: read the numbers as a
working measurement of the signals, not as a reproduction of Fig. 6.

Offline labels: ``data/labeled/synthetic.jsonl`` (the label stage's output) when it has enough rows, else the
base policy votes G=8 on real MedMCQA questions right here (same sampler and majority rule as the label stage).

    OMP_WAIT_POLICY=PASSIVE python bench/collapse.py --steps 6 --questions 8
Writes bench/results/collapse.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIGNALS = ("reward_mean", "distinct_answers", "answer_entropy", "all_agree_share", "valid_answer_share", "pseudo_label_agreement", "kl")


def offline_labels(model_dir: str, n: int, votes: int, max_new: int, seed: int) -> tuple[list, str]:
    """Questions with an offline majority label: the label stage's file if usable, else voted here by the base policy."""
    from medssr.records import read_questions

    labeled = ROOT / "data" / "labeled" / "synthetic.jsonl"
    if labeled.exists():
        rows = [q for q in read_questions(labeled) if q.majority is not None]
        if len(rows) >= n:
            return rows[:n], str(labeled.relative_to(ROOT))
    from medssr.answers import extract_answer
    from medssr.data.loaders import load_medmcqa
    from medssr.label.vote import majority_vote
    from medssr.rl.data import load_prompt_template, render_prompt
    from medssr.sampling import HFSampler

    pool = load_medmcqa(ROOT / "data" / "raw")[200 : 200 + 2 * n]
    template = load_prompt_template()
    sampler = HFSampler(model_dir, batch_size=32, seed=seed)
    outs = sampler.sample([render_prompt(q.render(), template) for q in pool], n=votes, temperature=1.0, max_new_tokens=max_new,
                          options=[q.options for q in pool], keys=[q.id for q in pool])
    kept = []
    for q, cs in zip(pool, outs, strict=True):
        r = majority_vote([extract_answer(c.text, q.options) for c in cs], q.id, seed)
        if r.kept:
            kept.append(dataclasses.replace(q, votes=r.votes, majority=r.majority, agreement=r.agreement, n_valid=r.n_valid))
        if len(kept) == n:
            break
    return kept, f"voted here: MedMCQA rows 200+, G={votes}, {max_new} new tokens, {len(kept)} of {len(pool)} had a majority"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--prompts-per-step", type=int, default=2)
    ap.add_argument("--max-new", type=int, default=48)
    ap.add_argument("--vote-max-new", type=int, default=96)
    ap.add_argument("--lr", type=float, default=1e-5, help="above the paper's 2e-6 so a few steps move the policy at all")
    ap.add_argument("--beta", type=float, default=0.001)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arms", default="offline,online_vote")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "collapse.json"))
    a = ap.parse_args()

    from medssr.config import load_params, set_offline_env

    set_offline_env()
    from medssr.models import resolve_model_dir
    from medssr.rl import trl_backend
    from medssr.rl.data import examples_from_questions, load_prompt_template, to_trl_dataset

    model_dir = resolve_model_dir("smollm2-135m")
    t0 = time.time()
    questions, label_source = offline_labels(model_dir, a.questions, 8, a.vote_max_new, a.seed)
    vote_s = time.time() - t0
    if not questions:
        sys.exit("no question got an offline majority: raise --vote-max-new")
    examples, _ = examples_from_questions(questions, "synthetic")
    dataset = to_trl_dataset(examples, load_prompt_template())
    params = load_params(ROOT / "params.yaml", {
        "train.num_generations": a.generations, "train.per_device_batch_size": a.generations * a.prompts_per_step,
        "train.max_completion_length": a.max_new, "train.seed": a.seed, "train.save_steps": 10_000,
        "train.stage1": {"max_steps": a.steps, "learning_rate": a.lr, "beta": a.beta, "max_samples": None},
    })
    arms = {}
    for arm in a.arms.split(","):
        reward = {"offline": "majority", "online_vote": "online_vote", "gold": "gold"}[arm]
        tmp = Path(tempfile.mkdtemp(prefix=f"collapse_{arm}_"))
        t1 = time.time()
        res = trl_backend.train(model_dir, dataset, reward, params.train, params.train.stage1, stage="stage1", run_dir=tmp / "run",
                                out_dir=tmp / "out")
        arms[arm] = {"reward": reward, "seconds": round(time.time() - t1, 1),
                     "steps": [{k: h[k] for k in ("step", *SIGNALS, "offline_label_agreement") if k in h} for h in res["history"]]}
    names = list(arms)
    out = {"model": "SmolLM2-135M-Instruct", "labels": label_source, "label_seconds": round(vote_s, 1), "questions": len(questions),
           "mean_offline_agreement": round(sum(q.agreement for q in questions) / len(questions), 3),
           "settings": {"steps": a.steps, "G": a.generations, "prompts_per_step": a.prompts_per_step, "max_new_tokens": a.max_new,
                        "lr": a.lr, "beta": a.beta, "seed": a.seed},
           "loadavg_at_end": [round(x, 2) for x in os.getloadavg()], "arms": arms}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    cols = ("reward_mean", "distinct_answers", "answer_entropy", "all_agree_share", "valid_answer_share")
    short = {"reward_mean": "reward", "distinct_answers": "distinct", "answer_entropy": "entropy", "all_agree_share": "all_agree",
             "valid_answer_share": "valid"}
    print(f"labels: {label_source}; mean offline agreement {out['mean_offline_agreement']}")
    print("step " + " ".join(f"{short[c] + ' ' + n[:7]:>18}" for c in cols for n in names))
    for i in range(a.steps):
        cells = []
        for c in cols:
            for n in names:
                rows = arms[n]["steps"]
                cells.append(f"{rows[i].get(c, float('nan')):>18.3f}" if i < len(rows) else f"{'':>18}")
        print(f"{i + 1:>4} " + " ".join(cells))
    for n in names:
        rows = arms[n]["steps"]
        means = {c: sum(r.get(c, 0.0) for r in rows) / len(rows) for c in cols}
        print(f"mean {n:12} " + ", ".join(f"{short[c]} {v:.3f}" for c, v in means.items()) + f"  ({arms[n]['seconds']} s)")
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
