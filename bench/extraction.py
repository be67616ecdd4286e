"""Answer extraction: ours (medssr.answers) against the official MedSSR rule, on hand-written endings and on
real model outputs; the real run also measures decoding to the end against stopping at the first answer.

    .venv/bin/python bench/extraction.py fixture      # tests/data/answer_endings.jsonl -> results/extraction_fixture.json
    flock /tmp/cpu.lock .venv/bin/python bench/extraction.py real --per-benchmark 16 --max-new-tokens 256
        # -> results/extraction_real.json and results/extraction_real_outputs.jsonl (every output, both readings);
        # --chat-template never: the same with the plain prompt (files extraction_real_never*)

Every disagreement is explained in docs/evaluation.md, "Decoding and answer extraction".
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medssr.answers import extract_answer  # noqa: E402

RESULTS = ROOT / "bench" / "results"
FIXTURE = ROOT / "tests" / "data" / "answer_endings.jsonl"
BENCHMARKS = ("medqa", "medmcqa", "mmlu", "pubmedqa", "medbullets")

# --- the official rule, as we read it (tdlhl/MedSSR vllm_logitsbias_multi.py, extract_option) -----------------
# Our own re-statement for comparison only, not used by the pipeline: on the stripped output, the LAST match of
# "The answer is X" (case-sensitive, X any capital A-Z); failing that "The answer is $\boxed{X}$", then
# "The answer is [X]"; for gemma models "The answer is **X**"; finally "the answer is x" in any case, upper-cased.
# Any letter counts (E on a 4-option question is kept and scored wrong); None goes to the +100 logit-bias pass.
_OFFICIAL_STEPS = (r"The answer is ([A-Z])", r"The answer is \$\\boxed\{([A-Z])\}\$", r"The answer is \[([A-Z])\]")


def official_rule(text: str, model_name: str = "") -> str | None:
    """The official extractor's letter for `text`, as we read its rule (see the comment above)."""
    text = (text or "").strip()
    if not text:
        return None
    for pattern in _OFFICIAL_STEPS:
        hits = re.findall(pattern, text)
        if hits:
            return hits[-1]
    if "gemma" in model_name.lower():
        hits = re.findall(r"The answer is \*\*([A-Z])\*\*", text)
        if hits:
            return hits[-1]
    hits = re.findall(r"The answer is ([A-Z])", text, re.IGNORECASE)
    return hits[-1].upper() if hits else None


def disagreement_kind(text: str, options: Mapping[str, str], ours: str | None, official: str | None) -> str:
    """Which documented difference between the two rules explains a disagreement (docs/evaluation.md)."""
    if official is None:
        return "commit_official_rule_cannot_read"
    last = list(re.finditer(r"The answer is ([A-Z])(.?)", text.strip(), re.IGNORECASE))
    word = last and (last[-1].group(2).isalnum() or last[-1].group(2) == "-" or last[-1].group(1).islower())  # 'Factor', 'a matter'
    if word and last[-1].group(1).upper() == official:
        return "word_read_as_its_first_letter"
    if official not in {k.upper() for k in options}:
        return "letter_not_an_option"
    if "<think>" in text and "</think>" not in text:
        return "inside_unclosed_think"
    if ours is None:
        return "no_single_final_commit"
    return "later_commit_in_another_format"


def compare(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Agreement of our reading with the official one over rows with 'text' and 'options' (and 'expected' if known)."""
    agree, dis, kinds = 0, [], Counter()
    right = {"ours": 0, "official": 0}
    for r in rows:
        ours, off = extract_answer(r["text"], r["options"], r.get("complete", True)), official_rule(r["text"])
        agree += ours == off
        if "expected" in r:
            right["ours"] += ours == r["expected"]
            right["official"] += off == r["expected"]
        if ours != off:
            kind = disagreement_kind(r["text"], r["options"], ours, off)
            kinds[kind] += 1
            dis.append({k: r[k] for k in ("id", "why", "expected") if k in r}
                       | {"ours": ours, "official": off, "kind": kind, "tail": r["text"][-160:]})
    out: dict[str, Any] = {"n": len(rows), "agree": agree, "agreement": round(agree / max(len(rows), 1), 4)}
    if rows and "expected" in rows[0]:
        out["correct_ours"], out["correct_official"] = right["ours"], right["official"]
    out["disagreement_kinds"] = dict(kinds.most_common())
    out["disagreements"] = dis
    return out


def run_fixture(path: Path = FIXTURE) -> dict[str, Any]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return compare(rows)


def run_real(model_dir: str, per_benchmark: int, max_new_tokens: int, batch_size: int, seed: int, setting: str = "auto",
             tag: str = "") -> dict[str, Any]:
    """Evaluate one model on real benchmark rows twice (to the end / stop at the first answer), as the runner does."""
    from eval.benchmarks import load_questions_file, seeded_slice
    from eval.runner import _constrained_pass, evaluate_model, load_eval_prompt
    from medssr.config import SamplingCfg
    from medssr.models import chat_template_rule
    from medssr.sampling import make_sampler

    raw = ROOT / "data" / "raw" / "benchmarks"
    benches = {b: seeded_slice(load_questions_file(raw / f"test_short_{b}.json.gz", b), per_benchmark, seed) for b in BENCHMARKS}
    n_q = sum(map(len, benches.values()))
    use_template, rule = chat_template_rule(model_dir, setting)
    sampler = make_sampler(model_dir, backend="hf", batch_size=batch_size, seed=seed, chat_template=use_template)
    template = load_eval_prompt()
    report: dict[str, Any] = {"model": model_dir, "questions": n_q, "chat_template": use_template, "rule": rule,
                              "max_new_tokens": max_new_tokens, "temperature": 0.0, "batch_size": batch_size}
    dump = []
    for stop in (False, True):
        cfg = SamplingCfg(temperature=0.0, max_new_tokens=max_new_tokens, batch_size=batch_size, stop_at_answer=stop)
        t0 = time.perf_counter()
        preds = evaluate_model(sampler, benches, cfg, runs=1, seed=seed, template=template, constrained_pass=False, progress=False)
        sample_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        _constrained_pass(sampler, benches, preds, template)
        second_s = time.perf_counter() - t0
        opts = {(b, q.id): q.options for b, qs in benches.items() for q in qs}
        rows = [{"id": f"{p.benchmark}:{p.id}", "text": p.output, "options": opts[(p.benchmark, p.id)],
                 "complete": p.finish_reason != "length"} for p in preds]
        reasons = Counter(getattr(p, "second_pass_reason", None) for p in preds)
        starts_echo = sum(_starts_with_echo(r["text"], r["options"]) for r in rows)
        mode = "to_end" if not stop else "stop_at_answer"
        report[mode] = {
            "tokens_per_question": round(sum(p.n_tokens for p in preds) / n_q, 1),
            "seconds_per_question": round(sample_s / n_q, 2), "second_pass_seconds": round(second_s, 1),
            "finish_reasons": dict(Counter(p.finish_reason for p in preds)),
            "invalid_before": round(sum(p.extracted is None for p in preds) / n_q, 4),
            "echo_rate": round(reasons["echo"] / n_q, 4), "no_answer_rate": round(reasons["no_answer"] / n_q, 4),
            "starts_with_option_echo": round(starts_echo / n_q, 4),
            "acc_before_second_pass": round(sum(p.extracted == p.gold for p in preds) / n_q, 4),
            "acc_after_second_pass": round(sum(p.final == p.gold for p in preds) / n_q, 4),
            "official_invalid": round(sum(official_rule(r["text"]) is None for r in rows) / n_q, 4),
            "vs_official": compare(rows),
        }
        dump += [{"mode": mode, **r, "gold": p.gold, "ours": p.extracted, "official": official_rule(r["text"]), "final": p.final,
                  "reason": getattr(p, "second_pass_reason", None), "n_tokens": p.n_tokens, "finish": p.finish_reason}
                 for r, p in zip(rows, preds, strict=True)]
    (RESULTS / f"extraction_real{tag}_outputs.jsonl").write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in dump), encoding="utf-8")
    return report


def _starts_with_echo(text: str, options: Mapping[str, str]) -> bool:
    """The output's first line repeats one of the prompt's option lines (whatever follows it)."""
    first = text.strip().split("\n", 1)[0].strip()
    return any(first.rstrip(".") == f"{k}. {v}".rstrip(".") for k, v in options.items())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["fixture", "real"])
    ap.add_argument("--model", default=str(ROOT / "artifacts" / "models" / "policy"))
    ap.add_argument("--per-benchmark", type=int, default=12)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chat-template", default="auto", choices=["auto", "always", "never"])
    a = ap.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = "" if a.chat_template == "auto" else f"_{a.chat_template}"
    if a.what == "fixture":
        out = run_fixture()
    else:
        out = run_real(a.model, a.per_benchmark, a.max_new_tokens, a.batch_size, a.seed, a.chat_template, tag)
    (RESULTS / f"extraction_{a.what}{tag if a.what == 'real' else ''}.json").write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in out.items() if k != "disagreements"}, indent=2, ensure_ascii=False)[:6000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
