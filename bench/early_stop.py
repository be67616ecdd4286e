"""The early stop at a committed answer (issue #22.3): per-token cost of the old full-text check against
``medssr.early_stop.CommitWatch`` at 1K, 4K and 16K characters of output, for both backends' checks.

* ``vllm``: the engine's logits processor per generated token (``medssr.vllm_worker._RequestStop``). Old: decode the
  new id; on a boundary character decode the whole output and run ``has_committed_answer`` on it. New: decode the
  new id; on a boundary decode incrementally and check the tail.
* ``hf``: the hf sampler's check per token (``_Run.emit``) given the text the token added (its incremental
  detokenisation is the same in both and not timed). Old: on a boundary ``has_committed_answer(whole text)``.

The output is real SmolLM2 text (bench/results/extraction_real*_outputs.jsonl, outputs without a committed answer
that are not mostly echoed option lines, concatenated until 17K characters without one), tokenised with SmolLM2's tokenizer, on a real MedQA option set. A
length's cost is the mean over the tokens that end between 0.75x and 1.25x of it, best of ``--repeats``; every
variant is fed from the first token, only those tokens are timed.

    flock /tmp/cpu.lock .venv/bin/python bench/early_stop.py      # -> bench/results/early_stop.json
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medssr.answers import has_committed_answer  # noqa: E402
from medssr.early_stop import BOUNDARY_CHARS, CommitWatch  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SOURCES = [RESULTS / "extraction_real_outputs.jsonl", RESULTS / "extraction_real_never_outputs.jsonl"]
LENGTHS = (1000, 4000, 16000)


def _listy(text: str) -> bool:
    """Mostly option lines ('B. Factor VIII'): an echo of the prompt, not reasoning."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return sum(bool(re.match(r"^\(?[A-Z][.)]\s", ln.strip())) for ln in lines) * 2 > len(lines)


def long_output(chars: int) -> tuple[str, dict[str, str]]:
    """Real outputs without a commit, joined until `chars` characters that never commit; one real option set."""
    rows = [json.loads(line) for src in SOURCES for line in src.open()]
    options = rows[0]["options"]
    pieces = [r["text"] for r in rows if r["text"].strip() and not has_committed_answer(r["text"], r["options"]) and not _listy(r["text"])]
    body, i = "", 0
    while len(body) < chars:
        cand = body + pieces[i % len(pieces)] + "\n\n"
        i += 1
        if not has_committed_answer(cand, options):  # a join can make a commit ('... C' + '. ...'): skip that piece
            body = cand
        if i > 50 * len(pieces):
            raise RuntimeError("cannot build a long output without a commit")
    return body, options


class OldRequestStop:
    """medssr.vllm_worker._RequestStop before #22.3 (without the logits part: no commit in this text)."""

    def __init__(self, tok, options):
        self.tok, self.options, self.seen, self.committed = tok, options, 0, False

    def __call__(self, output_ids, logits):
        if not self.committed and len(output_ids) > self.seen:
            new = self.tok.decode(output_ids[self.seen:], skip_special_tokens=True)
            self.seen = len(output_ids)
            if BOUNDARY_CHARS.intersection(new):
                self.committed = has_committed_answer(self.tok.decode(output_ids, skip_special_tokens=True), self.options)
        return logits


def hf_stream(tok, ids):
    """(added, text) per token, as the hf sampler's incremental detokenisation gives them (the test's replay)."""
    from tests.test_early_stop import hf_stream as replay

    return list(replay(tok, ids))


def per_token_us(step, make, n_tokens: int, timed: range, repeats: int) -> float:
    """Mean µs per token over the token indices `timed`; every variant is fed from the first token (the old
    processor's state is only its last seen length, the new checker's is its tail); best of `repeats`."""
    best = float("inf")
    for _ in range(repeats):
        state, total = make(), 0.0
        for k in range(min(n_tokens, timed.stop)):
            t0 = time.perf_counter()
            step(state, k)
            if k >= timed.start:
                total += time.perf_counter() - t0
        best = min(best, total / len(timed))
    return best * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "early_stop.json"))
    a = ap.parse_args()

    from medssr.models import load_tokenizer
    from medssr.vllm_worker import _RequestStop

    tok = load_tokenizer("smollm2-135m")
    text, options = long_output(int(max(LENGTHS) * 1.3))
    ids = tok.encode(text, add_special_tokens=False)
    stream = hf_stream(tok, ids)
    ends = [len(t) for _, t in stream]  # characters of output after each token
    prefixes = [ids[: k + 1] for k in range(len(ids))]

    variants = {
        "vllm_old": (lambda s, k: s(prefixes[k], None), lambda: OldRequestStop(tok, options)),
        "vllm_new": (lambda s, k: s(prefixes[k], None), lambda: _RequestStop(tok, options, tok.eos_token_id)),
        "hf_old": (lambda s, k: bool(stream[k][0]) and bool(BOUNDARY_CHARS.intersection(stream[k][0]))
                   and has_committed_answer(stream[k][1], options), lambda: None),
        "hf_new": (lambda s, k: s.feed(stream[k][0], bool(BOUNDARY_CHARS.intersection(stream[k][0])), full_text=stream[k][1]),
                   lambda: CommitWatch(options)),
    }
    rows = []
    for length in LENGTHS:
        timed = range(next(k for k, e in enumerate(ends) if e > 0.75 * length), next(k for k, e in enumerate(ends) if e > 1.25 * length))
        row = {"chars": length, "tokens_timed": len(timed), "token_at": timed.start + len(timed) // 2}
        for name, (step, make) in variants.items():
            row[name] = round(per_token_us(step, make, len(ids), timed, a.repeats), 2)
        rows.append(row)
    # whole outputs: the check's total cost for one sample of each length, and the same decisions (none commits)
    whole = []
    for length in LENGTHS:
        n = next(k for k, e in enumerate(ends) if e >= length) + 1
        row = {"chars": length, "tokens": n}
        for name, (step, make) in variants.items():
            row[name + "_ms"] = round(per_token_us(step, make, n, range(0, n), 1) * n / 1e3, 2)
        whole.append(row)
    watch = CommitWatch(options)
    for added, full in stream:
        assert not watch.feed(added, bool(BOUNDARY_CHARS.intersection(added)), full_text=full)
    out = {"lengths": rows, "whole_output": whole, "tokens": len(ids), "chars": len(text),
           "tail_stats": vars(watch.stats), "tail_span": watch.span, "python": platform.python_version(),
           "measured": time.strftime("%Y-%m-%d %H:%M")}
    Path(a.out).write_text(json.dumps(out, indent=2))

    print(f"per-token cost of the early-stop check, µs (SmolLM2 tokens; {len(ids)} tokens, {len(text)} chars of real output)")
    print(f"{'chars':>6} | {'vllm old':>9} {'vllm new':>9} {'ratio':>7} | {'hf old':>8} {'hf new':>8} {'ratio':>7}")
    for r in rows:
        print(f"{r['chars']:>6} | {r['vllm_old']:>9.1f} {r['vllm_new']:>9.1f} {r['vllm_old'] / r['vllm_new']:>6.1f}x | "
              f"{r['hf_old']:>8.1f} {r['hf_new']:>8.1f} {r['hf_old'] / r['hf_new']:>6.1f}x")
    print("whole output, ms of checking per sample:")
    for r in whole:
        print(f"{r['chars']:>6} chars, {r['tokens']:>5} tokens | vllm {r['vllm_old_ms']:>8.1f} -> {r['vllm_new_ms']:>6.1f} | "
              f"hf {r['hf_old_ms']:>8.1f} -> {r['hf_new_ms']:>6.1f}")
    print(f"tail checks: {watch.stats.checks}, mean {watch.stats.tail_chars / max(1, watch.stats.checks):.0f} chars, "
          f"max {watch.stats.max_tail_chars} before the new text; results: {a.out}")


if __name__ == "__main__":
    main()
