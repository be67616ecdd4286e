"""The early stop at a committed answer in linear time (medssr.early_stop, issue #22.3): the same first stop as the
old full-text check, token by token through SmolLM2's real tokenizer, in both backends; bounded work per check."""

from __future__ import annotations

import json
import random
import types
import unicodedata
from pathlib import Path

import pytest

import medssr.early_stop as early_stop
from medssr.answers import has_committed_answer
from medssr.early_stop import BOUNDARY_CHARS, CONTEXT, MAX_RUN, CommitWatch, IncrementalText
from medssr.vllm_worker import _RequestStop

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "tests" / "data" / "answer_endings.jsonl", ROOT / "bench" / "results" / "extraction_real_outputs.jsonl",
           ROOT / "bench" / "results" / "extraction_real_never_outputs.jsonl"]
OPTS = {"A": "Carcinoid syndrome", "B": "Pheochromocytoma", "C": "Systemic mastocytosis", "D": "VIPoma"}
YN = {"A": "yes", "B": "no", "C": "maybe"}
LONG = {"A": "Prevent excess posterior translation of the tibia relative to the femur during flexion of the knee joint",
        "B": "Café au lait spots with neurofibromas", "C": "Increase in serum cortisol", "D": "None of the above"}


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from medssr.models import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


# --- the rules before #22.3, verbatim: the reference ----------------------------------------------------------


def old_vllm_first_stop(tok, ids, options):
    """medssr.vllm_worker._RequestStop before: the first output length at which it forces EOS."""
    seen = 0
    for k in range(1, len(ids) + 1):
        out = ids[:k]
        new = tok.decode(out[seen:], skip_special_tokens=True)
        seen = len(out)
        if BOUNDARY_CHARS.intersection(new) and has_committed_answer(tok.decode(out, skip_special_tokens=True), options):
            return k
    return None


def hf_stream(tok, ids):
    """(added, text) per token as the hf sampler's _Run.emit decodes them (prefix / read offsets)."""
    toks, text, po, ro = [], "", 0, 0
    for t in ids:
        toks.append(t)
        prefix = tok.decode(toks[po:ro], skip_special_tokens=True)
        new = tok.decode(toks[po:], skip_special_tokens=True)
        added = ""
        if len(new) > len(prefix) and not new.endswith("\ufffd"):
            added = new[len(prefix):]
            text += added
            po, ro = ro, len(toks)
        yield added, text


def old_hf_first_stop(tok, ids, options):
    """_Run.emit before: the first token count at which the row finishes with 'answer'."""
    for k, (added, text) in enumerate(hf_stream(tok, ids), 1):
        if added and BOUNDARY_CHARS.intersection(added) and has_committed_answer(text, options):
            return k
    return None


# --- the new code, through the real entry points ---------------------------------------------------------------


def new_vllm_first_stop(tok, ids, options):
    """The real logits processor fed a growing output; a logits stand-in records the forced EOS."""
    proc = _RequestStop(tok, options, tok.eos_token_id)
    for k in range(1, len(ids) + 1):
        proc(ids[:k], _Logits())
        if proc.committed:
            return k, proc.watch.stats
    return None, proc.watch.stats


class _Logits:
    """Enough of a logits row for _RequestStop's EOS forcing."""

    def __getitem__(self, i):
        import torch

        return torch.tensor(0.5)

    def __setitem__(self, i, v):
        pass

    def fill_(self, v):
        return self


def new_hf_first_stop(tok, ids, options):
    """The real _Run.new_row + _Run.emit (a bare run: only what those two read)."""
    import torch

    from medssr.sampling import _Run

    run = _Run.__new__(_Run)
    run.s = types.SimpleNamespace(tok=tok, eos_ids={tok.eos_token_id})
    run.torch, run.seed, run.keys, run.prompt_ids = torch, 0, ["q"], [[0]]
    run.stop, run.options, run.max_new = [], [options], 10**9
    row = run.new_row(0, 0)
    for k, t in enumerate(ids, 1):
        run.emit(row, t)
        if row.reason == "answer":
            return k, row.watch.stats
    return None, row.watch.stats


# --- outputs ---------------------------------------------------------------------------------------------------


def real_outputs() -> list[tuple[str, dict]]:
    return [(r["text"], r["options"]) for src in SOURCES for r in map(json.loads, src.open(encoding="utf-8"))]


def _filler(rng: random.Random, pieces: list[str], n: int) -> str:
    body = ""
    while len(body) < n:
        body += rng.choice(pieces) + rng.choice(["\n\n", " ", "\n", ". "])
    return body


def long_outputs(seed: int = 0) -> list[tuple[str, dict]]:
    """Real reasoning (outputs without a commit) run long and then ended by a real ending, and the shapes the tail
    must get right: long runs inside a commit phrase, <think> blocks, guesses and quoted examples before the
    commit, multi-byte text, long and decomposed option texts."""
    rng = random.Random(seed)
    real = real_outputs()
    pieces = [t for t, o in real if len(t) > 80 and not has_committed_answer(t, o)]
    out = [(_filler(rng, pieces, rng.choice([600, 2500, 6000])) + t, o) for t, o in rng.sample(real, 24)]

    def F(n):
        return _filler(rng, pieces, n)

    for k in (40, 400, 1500):
        out += [(F(1500) + "The answer is" + " " * k + "C.", OPTS), (F(1500) + "Final" + "\n" * k + "answer: B.", OPTS),
                (F(1500) + "The answer is " + "-" * k + " D.", OPTS)]
    out += [
        ("<think>\n" + F(2500) + "The answer is A.\n</think>\n\n" + F(400) + "The answer is B.", OPTS),
        ("<think>\n" + F(2500) + "The answer is A.\n" + F(400), OPTS),
        (F(800) + "</think>\n" + F(1200) + "<think> The answer is C.", OPTS),
        (F(800) + "</think>\n" + F(1200) + "</think> x " + F(600) + " The answer is D.", OPTS),
        (F(1500) + "I think that" + " the patient with flushing, wheezing and diarrhea" * 5 + " the answer is C. " + F(300) + "\nThe answer is D.", OPTS),
        (F(1500) + "For example, e.g. the answer is A. " + F(400) + "Answer: B.", OPTS),
        ("患者阵发性高血压、头痛、心悸，考虑嗜铬细胞瘤。" * 60 + "答案是 B。\n", OPTS),
        ("The patient “improved” 🙂 and then “worsened”. " * 50 + "The answer is “B”.", OPTS),
        (F(2500) + "the answer is " + LONG["A"] + ".", LONG),
        (F(2500) + "the answer is " + unicodedata.normalize("NFD", LONG["B"]) + ".", LONG),
        (F(2500) + "The answer is B.\n" + "\n" * 2500 + "x", OPTS),
        ("\n" * 3000 + "The answer is C.", OPTS),
    ]
    # boundaries inside the commit phrase: checks fall inside it and the tail must reach back to its cue, across a
    # newline (which is where a tail may start), past the text the check before it saw
    prose = "The trial enrolled adults with stable disease, and the outcome was measured at one year " * 4
    for cue in ("Final answer:\n\n**{}**.", "The answer is\n\n\"({})\".", "The answer is, most likely,\n{}.",
                "**Final Answer:**\n\n- \"{}\"\n", "Answer:\n*\n*\n({}).", "The correct option is:\n\n\\boxed{{{}}}.",
                "Answer:\n\\textbf{{option *{}*}}.", "Final answer:\n\\mathbf{{choice **{}**}}.", "The answer is\n\\text{{letter ({})}}."):
        out += [(prose + cue.format("maybe"), YN), (prose + cue.format("C"), OPTS), (prose + cue.format("C"), YN)]
    comma = {"A": "Prevent excess translation of the tibia, relative to the femur, in flexion", "B": "x, y", "C": "z"}
    out += [(prose + "So the answer is prevent excess translation of the tibia, relative to the femur, in flexion.", comma),
            (prose + "I think, given the flushing, the wheezing, the diarrhea, the raised urinary 5-HIAA, and the liver "
             "lesions on imaging, that the answer is C. " + prose + "Therefore, the answer is D.", OPTS)]
    for _ in range(12):
        guess = rng.choice(["I think the answer is A. ", "I don't think the answer is B. ", 'Example: "The answer is C". ',
                            "Maybe the answer is D.\n", "Could it be C? "])
        end = rng.choice(["The answer is C.", "Answer: (B)\n", "**Final Answer:** D", "Therefore, A is correct."])
        out.append((F(rng.choice([400, 2000, 5000])) + guess + F(rng.choice([10, 200, 400])) + end, OPTS))
    return out


def cases() -> list[tuple[str, dict]]:
    return real_outputs() + long_outputs()


# --- the same decisions ----------------------------------------------------------------------------------------


def test_vllm_processor_stops_where_the_full_decode_check_did(tok):
    stopped = 0
    for text, options in cases():
        ids = tok.encode(text, add_special_tokens=False)
        want = old_vllm_first_stop(tok, ids, options)
        got, _ = new_vllm_first_stop(tok, ids, options)
        assert got == want, f"first stop {got} != {want} for {text[-200:]!r}"
        stopped += want is not None
    assert stopped >= 120, f"only {stopped} outputs commit: the test would prove little"


def test_hf_sampler_stops_where_the_full_text_check_did(tok):
    stopped, alarms = 0, 0
    for text, options in cases():
        ids = tok.encode(text, add_special_tokens=False)
        want = old_hf_first_stop(tok, ids, options)
        got, stats = new_hf_first_stop(tok, ids, options)
        assert got == want, f"first stop {got} != {want} for {text[-200:]!r}"
        stopped += want is not None
        alarms += stats.false_alarms
    assert stopped >= 120
    assert alarms == 0, "no output here has a commit the tail sees but the whole output does not"


def test_a_commit_only_the_tail_sees_is_rejected_by_the_full_check(tok):
    """'I think the final\\nanswer: A.' is a guess; once the tail starts at that newline, 'answer: A.' alone looks
    like a commit. The full check rejects it and the stop comes where the old rule put it."""
    prose = "The patient has flushing and diarrhea after meals. Serotonin is high. " * 8
    text = prose + "I think the final\nanswer: A. " + prose * 2 + "So the answer is D."
    ids = tok.encode(text, add_special_tokens=False)
    want = old_hf_first_stop(tok, ids, OPTS)
    assert want is not None and tok.decode(ids[:want]).endswith("So the answer is D.")
    got, stats = new_hf_first_stop(tok, ids, OPTS)
    assert got == want and stats.false_alarms == 1 and stats.full_checks >= 1
    assert new_vllm_first_stop(tok, ids, OPTS)[0] == old_vllm_first_stop(tok, ids, OPTS) == want


def test_incremental_text_is_the_full_decode(tok):
    rng = random.Random(3)
    texts = [t for t, _ in real_outputs()[:120]] + ["“Quoted” — dash… 🙂 ü é 患者阵发性高血压 ﬁ Ⅳ " * 15]
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False)
        inc, kept, k = IncrementalText(tok), "", 0
        while k < len(ids):
            k = min(len(ids), k + rng.choice([1, 1, 1, 2, 3, 7]))
            added, pending = inc.update(ids[:k])
            kept += added
            assert kept + pending == tok.decode(ids[:k], skip_special_tokens=True)


def test_think_flags_and_pending_text():
    w = CommitWatch(OPTS)
    assert not w.feed("<think>\nThe answer is A.", True)
    assert not w.feed(" More thought. " * 100, True)
    assert not w.feed("The answer is B.", True), "still inside <think>: its opening is long before the tail"
    assert w.feed("\n</think>\nThe answer is C", True, pending=".\ufffd")
    w = CommitWatch(OPTS)
    assert not w.feed("The answer is C", True, pending="\ufffd")


# --- bounded work --------------------------------------------------------------------------------------------


def _calls_per_check(tok, text, options):
    """Characters has_committed_answer got per call, and the characters added since the check before it."""
    calls: list[int] = []
    real = early_stop.has_committed_answer

    def spy(t, opts):
        calls.append(len(t))
        return real(t, opts)

    watch, rows, since = CommitWatch(options), [], 0
    early_stop.has_committed_answer = spy
    try:
        for added, full in hf_stream(tok, tok.encode(text, add_special_tokens=False)):
            since += len(added)
            check = bool(added) and bool(BOUNDARY_CHARS.intersection(added))
            calls.clear()
            hit = watch.feed(added, check, full_text=full)
            rows += [(n, since, len(full)) for n in calls]
            since = 0 if check else since
            if hit:
                break
    finally:
        early_stop.has_committed_answer = real
    return rows, watch


@pytest.mark.parametrize("chars", [1000, 4000, 16000])
def test_work_per_check_is_bounded_whatever_the_length(tok, chars):
    rng = random.Random(chars)
    real = real_outputs()
    pieces = [t for t, o in real if len(t) > 80 and not has_committed_answer(t, OPTS)]
    body = ""
    while len(body) < chars:
        piece = rng.choice(pieces) + "\n\n"
        if not has_committed_answer(body + piece, OPTS):
            body += piece
    rows, watch = _calls_per_check(tok, body + "So the answer is B.", OPTS)
    assert watch.committed
    bound = len("</think>") + CONTEXT + watch.span + MAX_RUN  # the tail before the text since the last check
    tails = [n - since for n, since, full in rows if n != full]
    fulls = [n for n, since, full in rows if n == full and full > bound + since]
    assert len(tails) > chars / 40, "a check on every few tokens"
    assert max(tails) <= bound
    assert max(tails) <= CONTEXT + 2 * watch.span, "real text has no long runs: the tail is a few hundred characters"
    assert len(fulls) <= 1, "the whole output is read once, to confirm the stop"
    assert sum(tails) / len(tails) < 700
