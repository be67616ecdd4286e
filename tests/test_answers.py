"""Answer extraction reads what a careful reader would: the last committed option, or None."""

from __future__ import annotations

import gzip
import json
import re
import time
from pathlib import Path

import pytest

from medssr.answers import ANSWER_SUFFIX, echoes_options, extract_answer, has_committed_answer, letters_for

BENCH = Path(__file__).resolve().parents[1] / "data" / "raw" / "benchmarks"
ENDINGS = Path(__file__).resolve().parent / "data" / "answer_endings.jsonl"
_OPTION_LINE = re.compile(r"^([A-J])\.\s?(.*)$")


def split_options(question: str) -> dict[str, str]:
    """The trailing 'A. text' lines of a benchmark question (the loaders live elsewhere; this is enough here)."""
    opts: dict[str, str] = {}
    for line in reversed(question.rstrip().rstrip('"').rstrip().split("\n")):
        m = _OPTION_LINE.match(line)
        if not m:
            break
        opts[m.group(1)] = m.group(2)
    return dict(sorted(opts.items()))


def load_rows(name: str) -> list[dict]:
    with gzip.open(BENCH / f"test_short_{name}.json.gz", "rt", encoding="utf-8") as f:
        return json.load(f)


def row(name: str, row_id: str) -> dict:
    return next(r for r in load_rows(name) if r["id"] == row_id)


# Real benchmark rows (options parsed from the question text).
FACTORS = split_options(row("medqa", "medqa-000786")["question"])  # Factor VII / VIII / IX / XII, gold D
NMS = split_options(row("medqa", "medqa-000853")["question"])  # catatonia / heat stroke / NMS / oversedation
PUBMED = split_options(load_rows("pubmedqa")[0]["question"])  # yes / no / maybe
CHROMO = split_options(row("medbullets", "medbullets-10a78bc1-a20d-4cfd-afad-985197edf860")["question"])  # 4p..15q, A-E
ACNE = split_options(row("medbullets", "medbullets-d517bc17-0c32-4d21-8f56-c57dc043e3f1")["question"])  # A-E
CONDUCTION = split_options(row("medbullets", "medbullets-2de808fb-4ff9-44d4-aa74-a8e729b00f86")["question"])  # 'Atria > ...'
BLADDER = split_options(row("mmlu", "mmlu-anatomy-002")["question"])  # Bladder / Kidney / Ureter / Urethra
# The paper's own examples (Appendix E, Tables 15 and 17).
WORSTER = {"A": "Moebius syndrome", "B": "Spinal muscular atrophy (bulbar form)", "C": "Worster-Drought syndrome",
           "D": "Anterior opercular syndrome (acquired suprabulbar palsy)"}
HAND = {"A": "Carpal tunnel syndrome", "B": "Cervical radiculopathy (C6-C7)", "C": "Ulnar nerve entrapment at the elbow",
        "D": "Thoracic outlet syndrome"}
CELLS = {"A": "Vitamin C deficiency", "B": "T cells", "C": "B cells", "D": "Natural killer cells"}
OPTION_SETS = {"FACTORS": FACTORS, "NMS": NMS, "PUBMED": PUBMED, "CHROMO": CHROMO, "ACNE": ACNE, "CONDUCTION": CONDUCTION,
               "BLADDER": BLADDER, "WORSTER": WORSTER, "HAND": HAND, "CELLS": CELLS}

SMOL_RAMBLE = (
    "The patient is a 14-year-old boy with a swollen knee. A prolonged PTT with normal PT suggests the intrinsic pathway. "
    "Factor VIII deficiency is hemophilia A, which causes hemarthrosis, so I think the answer is B. But wait, bradykinin "
    "formation is decreased, and factor XII activates kallikrein. Hemophilia would not explain that. "
    "So the answer is D. Factor XII"
)
PAPER_MAJORITY = (
    "### Final Considerations: - The combination of significant speech delay ... suggests a congenital condition. Given the "
    "specific combination of symptoms and imaging findings, **Worster-Drought syndrome** (also known as congenital central "
    "hypoventilation syndrome with associated craniofacial anomalies) is the most likely diagnosis.\n"
    "### Final Answer: The final answer is C."
)
PAPER_MINORITY = (
    "### Step 6: Final Diagnosis Given the clinical presentation ... the most likely diagnosis is Moebius syndrome.\n"
    "### Final Answer The final answer is A."
)
PAPER_FAILURE = (
    "- **A: Carpal Tunnel Syndrome**: Typically presents with numbness and tingling ...\n"
    "- **B: Cervical Radiculopathy (C6-C7)**: Commonly presents with weakness in the wrist extensors ...\n"
    "### Final Answer: Based on the clinical presentation and physical exam findings, the most likely diagnosis is "
    "**B: Cervical radiculopathy (C6-C7)**.\nThe final answer is B\""
)
QWEN_STEPS = (
    "## Step 1: Analyze the coagulation profile\nPTT is prolonged while PT and bleeding time are normal.\n"
    "## Step 2: Consider bradykinin\nDecreased bradykinin points to factor XII (Hageman factor).\n\n"
    "### Final Answer\n**D. Factor XII**"
)
LLAMA_BOXED = "Factor XII deficiency prolongs PTT without bleeding.\n\nTherefore, the final answer is: $\\boxed{D}$"

# (case id, output text, option set, expected letter or None)
CASES = [
    # --- plain commits, letter formats --------------------------------------------------------------
    ("the_answer_is_paren", "The answer is (C)", "HAND", "C"),
    ("the_answer_is_dot", "The answer is C.", "HAND", "C"),
    ("final_answer_no_period", "The final answer is C", "HAND", "C"),
    ("bold_final_answer_header", "**Final Answer:** D. Thoracic outlet syndrome", "HAND", "D"),
    ("boxed", "Thus \\boxed{B}", "HAND", "B"),
    ("boxed_text", "The answer is $\\boxed{\\text{B}}$.", "HAND", "B"),
    ("boxed_with_option_text", "\\boxed{C. Ulnar nerve entrapment at the elbow}", "HAND", "C"),
    ("answer_colon_lowercase", "Answer: c", "HAND", "C"),
    ("answer_tag", "<think>median nerve...</think>\n<answer>C</answer>", "HAND", "C"),
    ("correct_option_colon", "Correct option: B", "HAND", "B"),
    ("correct_answer_is_option", "After weighing everything, the correct answer is option B", "HAND", "B"),
    ("letter_first_is_correct", "Thenar atrophy and neck pain. Therefore, B is correct.", "HAND", "B"),
    ("letter_first_question_is_no_commit", "Therefore, B is correct?", "HAND", None),
    ("option_is_correct_answer", "Option A is incorrect. Option B is the correct answer.", "HAND", "B"),
    ("full_width_letter", "答案: The answer is Ｃ。", "HAND", "C"),
    ("full_width_paren_letter", "The answer is （Ｄ）", "HAND", "D"),
    ("markdown_bold_letter", "The answer is **C**", "HAND", "C"),
    ("letter_paren_text_bare_line", "Reasoning about the ulnar nerve.\nC) Ulnar nerve entrapment at the elbow", "HAND", "C"),
    ("paren_letter_text_after_cue", "The answer is (C) Ulnar nerve entrapment at the elbow", "HAND", "C"),
    ("answer_colon_newlines", "so the answer is: \n\nD", "HAND", "D"),
    ("final_answer_heading_then_letter", "### Final Answer\nB", "HAND", "B"),
    ("bare_last_line_letter", "Median nerve compression at the wrist explains all findings.\n\nA", "HAND", "A"),
    ("json_answer", '{"answer": "C", "explanation": "ulnar nerve"}', "HAND", "C"),
    ("json_answer_single_quotes", "{'answer': 'A'}", "HAND", "A"),
    ("answer_would_be", "Given the bradykinin finding, the answer would be D.", "FACTORS", "D"),
    ("i_would_choose", "I would choose D because Hageman factor starts the contact pathway.", "FACTORS", "D"),
    ("answer_is_therefore", "The answer is therefore C.", "NMS", "C"),
    ("answer_with_bracket", "The answer is [C].", "NMS", "C"),
    ("answer_then_special_token", "The answer is C.<|im_end|>", "NMS", "C"),
    ("answer_before_eos_token", "The answer is C<|endoftext|>", "NMS", "C"),
    # --- last commit wins -----------------------------------------------------------------------------
    ("last_commit_wins", "I think E... let me think again... The answer is C", "CHROMO", "C"),
    ("smollm_ramble_revises", SMOL_RAMBLE, "FACTORS", "D"),
    ("adversarial_trace_then_answer",
     "I think the answer is E. 15q, but I am not sure. Let me think again.\nCri-du-chat is a 5p deletion. The answer is B.", "CHROMO", "B"),
    ("adversarial_trace_alone_is_tentative", "I think the answer is E. 15q, but I am not sure. Let me think again.", "CHROMO", None),
    ("hypothesis_is_no_commit", "My initial hypothesis is C. 5q, but I may be wrong. Let me verify my reasoning.", "CHROMO", None),
    ("repeated_answers_last", "The answer is A. The answer is B. The answer is C.", "NMS", "C"),
    # --- real small-model endings (paper Appendix E) ----------------------------------------------------
    ("paper_majority_worster", PAPER_MAJORITY, "WORSTER", "C"),
    ("paper_minority_moebius", PAPER_MINORITY, "WORSTER", "A"),
    ("paper_failure_case", PAPER_FAILURE, "HAND", "B"),
    ("paper_most_likely_bold_letter_colon", "the most likely diagnosis is **B: Cervical radiculopathy (C6-C7)**", "HAND", "B"),
    ("paper_therefore_final", "Immediate delivery is generally recommended. Therefore, the final answer is C.", "HAND", "C"),
    ("qwen_final_answer_block", QWEN_STEPS, "FACTORS", "D"),
    ("llama_boxed", LLAMA_BOXED, "FACTORS", "D"),
    # --- answers given by option text --------------------------------------------------------------------
    ("pubmed_answer_no", "The answer is no.", "PUBMED", "B"),
    ("pubmed_answer_yes_capital", "Based on the trial, the answer is: Yes, fenofibrate improved AHI.", "PUBMED", "A"),
    ("pubmed_answer_maybe_quoted", "The answer is 'maybe'", "PUBMED", "C"),
    ("pubmed_not_is_not_no", "The answer is not clear from the abstract.", "PUBMED", None),
    ("pubmed_yes_or_no", "The answer is yes or no.", "PUBMED", None),
    ("text_answer_moebius", "The answer is Moebius syndrome", "WORSTER", "A"),
    ("text_answer_normalised", "the answer is  worster drought SYNDROME!", "WORSTER", "C"),
    ("text_answer_after_article", "The most likely diagnosis is the Worster-Drought syndrome.", "WORSTER", "C"),
    ("text_before_most_likely", "Therefore, Worster-Drought syndrome is the most likely diagnosis.", "WORSTER", "C"),
    ("text_longest_option_wins", "The answer is Factor VIII.", "FACTORS", "B"),
    ("text_factor_ix", "The answer is Factor IX", "FACTORS", "C"),
    ("text_most_appropriate_step", "The most appropriate next step in management is Topical antibiotics.", "ACNE", "E"),
    ("text_with_symbols", "The answer is Purkinje fibers > atria > ventricles > AV node.", "CONDUCTION", "D"),
    ("text_b_cells_not_letter_b", "The answer is B cells", "CELLS", "C"),
    ("text_vitamin_c_is_option_a", "The answer is Vitamin C deficiency", "CELLS", "A"),
    ("text_mmlu_bladder", "Urine is stored in the bladder. Answer: Bladder", "BLADDER", "A"),
    ("text_nms", "The most likely diagnosis is neuroleptic malignant syndrome given haloperidol and rigidity.", "NMS", "C"),
    # --- five options (Medbullets A-E) -------------------------------------------------------------------
    ("medbullets_letter_e_valid", "The answer is E. Topical antibiotics", "ACNE", "E"),
    ("medbullets_chromosome_text", "A cat-like cry means the deletion is on 5p. The answer is 5p.", "CHROMO", "B"),
    ("medbullets_chromosome_letter", "Cri-du-chat syndrome.\n\nThe answer is B.", "CHROMO", "B"),
    # --- no answer / invalid / two letters ----------------------------------------------------------------
    ("no_answer_at_all", "Thenar atrophy suggests median nerve involvement.", "HAND", None),
    ("empty_output", "", "HAND", None),
    ("truncated_before_letter", "Putting it together, the answer is", "HAND", None),
    ("truncated_mid_reasoning", "### Step 3: Differential Diagnosis\n1. **Moebius syndrome (A)**: - Characterized by", "WORSTER", None),
    ("letter_not_among_options", "The answer is E.", "HAND", None),
    ("last_commit_invalid", "The answer is C. Hmm no. Final answer: E", "HAND", None),
    ("two_letters_or", "The answer is A or B", "HAND", None),
    ("two_letters_and", "The answer is A and C.", "HAND", None),
    ("two_letters_slash", "Final answer: B/D", "HAND", None),
    ("second_letter_is_a_clause", "The answer is C, and D is wrong because it is acquired.", "WORSTER", "C"),
    # --- false positives to avoid ---------------------------------------------------------------------------
    ("article_a_is_not_answer", "A 45-year-old man presents with hand weakness.", "HAND", None),
    ("vitamin_c_is_not_answer_c", "Vitamin C deficiency causes scurvy, not neuropathy.", "HAND", None),
    ("vitamin_c_is_correct_not_c", "Vitamin C is the correct supplement here.", "HAND", None),
    ("c7_is_not_c", "The most likely cause is C7 radiculopathy", "HAND", None),
    ("answer_choices_header", "Answer choices: A. x B. y", "HAND", None),
    ("answer_is_article", "The answer is a matter of the nerve distribution.", "HAND", None),
    ("pronoun_i_is_not_option_i", "The answer is I think related to the median nerve", "HAND", None),
    ("negated_commit", "I don't think the answer is C.", "HAND", None),
    ("answer_is_not_letter", "The answer is not C", "HAND", None),
    ("quoted_format_example", 'You must finish as follows. Example: "The answer is A"', "HAND", None),
    ("format_placeholder", "Please format the final answer as: The answer is [LETTER].", "HAND", None),
    ("repeated_option_list_is_not_answer", "Options:\nA. Carpal tunnel syndrome\nB. Cervical radiculopathy (C6-C7)\n"
     "C. Ulnar nerve entrapment at the elbow\nD. Thoracic outlet syndrome", "HAND", None),
    ("b_cell_hyphen", "The answer is B-cell lymphoma", "HAND", None),
    ("smollm_echoes_options_inline", "Answer: A) Factor VII B) Factor VIII C) Factor IX D) Factor XII", "FACTORS", None),
    ("smollm_echoes_options_lines", "Answer:\nA. Factor VII\nB. Factor VIII\nC. Factor IX\nD. Factor XII", "FACTORS", None),
    ("answer_then_one_option_discussed", "The answer is D. Factor XII. A. Factor VII is wrong.", "FACTORS", "D"),
]


@pytest.mark.parametrize(("text", "options_name", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_extract_answer_reads_the_last_commit(text: str, options_name: str, expected: str | None) -> None:
    assert extract_answer(text, OPTION_SETS[options_name]) == expected


def test_table_has_at_least_60_varied_endings() -> None:
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


def test_real_option_sets_parsed_from_benchmarks() -> None:
    assert FACTORS == {"A": "Factor VII", "B": "Factor VIII", "C": "Factor IX", "D": "Factor XII"}
    assert PUBMED == {"A": "yes", "B": "no", "C": "maybe"}
    assert letters_for(CHROMO) == ["A", "B", "C", "D", "E"]


@pytest.mark.parametrize("name", ["medqa", "pubmedqa", "medbullets", "mmlu"])
def test_every_gold_option_text_reads_back_as_its_letter(name: str) -> None:
    """On every real row, 'The answer is <gold option text>.' gives the gold letter (rows with twin options skipped)."""
    checked = 0
    for r in load_rows(name):
        opts = split_options(r["question"])
        texts = [t.strip().lower() for t in opts.values()]
        if r["gold"] not in opts or len(set(texts)) < len(texts) or any(len(t) == 1 for t in texts):
            continue  # twin or one-letter option texts ('A. B  B. C ...') are ambiguous by construction
        gold_text = opts[r["gold"]]
        assert extract_answer(f"The answer is {gold_text}.", opts) == r["gold"], (r["id"], gold_text)
        assert extract_answer(f"Reasoning...\nThe answer is {r['gold']}.", opts) == r["gold"], r["id"]
        checked += 1
    assert checked > 0.95 * len(load_rows(name))


def test_medbullets_adversarial_traces_lose_to_the_final_answer() -> None:
    """Each real medbullets row carries three wrong 'I think ...' traces; the final commit must win over all of them."""
    for r in load_rows("medbullets")[:60]:
        opts = split_options(r["question"])
        for k in ("adversarial_trace_0", "adversarial_trace_1", "adversarial_trace_2"):
            text = f"{r[k]}\nOn reflection the findings fit {r['answer_content']}.\nThe answer is {r['gold']}."
            assert extract_answer(text, opts) == r["gold"], (r["id"], k)


def test_duplicate_option_texts_are_ambiguous() -> None:
    opts = {"A": "It is seen only in influenza A", "B": "It mostly affects the matrix protein", "C": "It mostly affects the matrix protein"}
    assert extract_answer("The answer is It mostly affects the matrix protein.", opts) is None
    assert extract_answer("The answer is C.", opts) == "C"


def test_one_letter_option_texts_fall_back_to_the_option_named_by_text() -> None:
    opts = {"A": "A", "B": "B", "C": "C", "D": "E"}  # real medqa-000454 layout (labels on a figure)
    assert extract_answer("The answer is E.", opts) == "D"
    assert extract_answer("The answer is C.", opts) == "C"


def test_lowercase_option_keys_are_read_as_letters() -> None:
    assert letters_for({"a": "x", "b": "y"}) == ["A", "B"]
    assert extract_answer("The answer is B.", {"a": "x", "b": "y"}) == "B"


def test_no_options_means_no_answer() -> None:
    assert extract_answer("The answer is B.", {}) is None


def test_answer_suffix_reads_back_with_a_forced_letter() -> None:
    """The constrained second pass appends ANSWER_SUFFIX and one letter; that must parse."""
    assert extract_answer(f"...ran out of tokens. {ANSWER_SUFFIX} B", HAND) == "B"


def test_huge_output_is_read_in_bounded_time() -> None:
    text = "The answer is " * 80_000 + "The answer is D."
    t0 = time.perf_counter()
    assert extract_answer(text, HAND) == "D"
    assert time.perf_counter() - t0 < 5.0  # measured ~0.5 s on a shared 2-core box


COMMITS = [
    ("answer_is_dot", "Putting it together, the answer is C.", True),
    ("answer_is_paren", "The answer is (C)\n", True),
    ("bold_letter", "**Final Answer:** **D**", True),
    ("boxed_closed", "Thus $\\boxed{B}", True),
    ("answer_tag_closing", "<answer>C</", True),
    ("text_commit", "The answer is no.", True),
    ("letter_at_end_may_continue", "The answer is A", False),
    ("letter_continues_as_word", "The answer is Anemia", False),
    ("cue_without_letter", "The answer is", False),
    ("tentative_guess", "I think the answer is E.", False),
    ("quoted_example", 'Example: "The answer is A".', False),
    ("mid_reasoning", "1. **Moebius syndrome (A)**: - Characterized by facial paralysis.", False),
    ("invalid_letter_still_stops", "The answer is E.", True),
    ("full_width", "The answer is Ｃ。", True),
    ("newline_boundary", "Final answer: B\n", True),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in COMMITS], ids=[c[0] for c in COMMITS])
def test_has_committed_answer_needs_a_boundary_after_the_letter(text: str, expected: bool) -> None:
    opts = PUBMED if "no." in text else HAND
    assert has_committed_answer(text, opts) is expected


def test_has_committed_answer_grows_true_token_by_token() -> None:
    """Fed a growing prefix as a sampler would, it turns True exactly when the boundary after the letter arrives."""
    text = "Step 1: PTT is prolonged. The answer is D. Factor XII"
    first = next(i for i in range(1, len(text) + 1) if has_committed_answer(text[:i], FACTORS))
    assert text[:first].endswith("The answer is D.")


def test_has_committed_answer_is_cheap() -> None:
    tail = "- **Radiating pain from the neck to the shoulder**: This suggests a cervical spine issue rather than a peripheral"
    t0 = time.perf_counter()
    for _ in range(2000):
        has_committed_answer(tail, HAND)
    assert (time.perf_counter() - t0) / 2000 < 2e-3  # measured ~0.05 ms per call


# --- hand-written endings of real model styles (tests/data/answer_endings.jsonl, measured in bench/extraction.py) ---
ENDING_ROWS = [json.loads(line) for line in ENDINGS.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.parametrize("ending", ENDING_ROWS, ids=[r["id"] for r in ENDING_ROWS])
def test_every_hand_written_ending_reads_as_expected(ending: dict) -> None:
    assert extract_answer(ending["text"], ending["options"]) == ending["expected"], ending["why"]


def test_endings_fixture_covers_every_model_style() -> None:
    ids = [r["id"] for r in ENDING_ROWS]
    assert len(ids) >= 100 and len(set(ids)) == len(ids)
    for style in ("smol_echo", "smol_cutoff", "qwen_think", "llama_", "cn_", "issue_"):
        assert sum(i.startswith(style) for i in ids) >= 3, style
    assert all(r["why"] and set(r) == {"id", "text", "options", "expected", "why"} for r in ENDING_ROWS)


CORTISOL = {"A": "Decrease in serum ACTH", "B": "Decrease in urinary 17-hydroxycorticosteroids",
            "C": "Increase in serum aldosterone", "D": "Increase in serum cortisol"}


def test_repeating_the_prompts_last_option_line_is_an_echo_not_a_choice() -> None:
    assert extract_answer("D. Increase in serum cortisol\n", CORTISOL) is None
    assert echoes_options("D. Increase in serum cortisol\n", CORTISOL)


def test_an_echo_followed_by_a_commit_is_that_commit() -> None:
    text = "D. Increase in serum cortisol\n\nPrednisone suppresses ACTH. The answer is A."
    assert extract_answer(text, CORTISOL) == "A" and not echoes_options(text, CORTISOL)


def test_a_lone_option_line_other_than_the_last_is_a_choice_not_an_echo() -> None:
    assert extract_answer("B. Decrease in urinary 17-hydroxycorticosteroids", CORTISOL) == "B"
    assert not echoes_options("B. Decrease in urinary 17-hydroxycorticosteroids", CORTISOL)


def test_no_answer_that_is_not_an_echo_is_not_called_one() -> None:
    assert not echoes_options("Prednisone suppresses the axis and", CORTISOL)
    assert not echoes_options("<think>D. Increase in serum cortisol", CORTISOL)  # still thinking: no answer, no echo


def test_a_cut_off_analysis_line_is_no_answer() -> None:
    carcinoid = {"A": "Carcinoid syndrome", "B": "Pheochromocytoma", "C": "Systemic mastocytosis", "D": "VIPoma"}
    assert extract_answer("A. Carcinoid syndrome - ", carcinoid) is None
    assert extract_answer("Reasoning.\nA. Carcinoid syndrome", carcinoid) == "A"


def test_early_stop_would_score_the_first_answer_so_evaluation_reads_to_the_end() -> None:
    """Why eval.sampling.stop_at_answer is false: the sampler would stop at 'A.', the full output answers B."""
    text = "The answer is A. Wait... The answer is B."
    first = next(i for i in range(1, len(text) + 1) if has_committed_answer(text[:i], HAND))
    assert extract_answer(text[:first], HAND) == "A" and extract_answer(text, HAND) == "B"


def test_no_early_stop_inside_an_unclosed_think_block() -> None:
    assert not has_committed_answer("<think>\nThe answer is B. But wait,", HAND)
    assert has_committed_answer("<think>\nmaybe B\n</think>\n\nThe answer is C.", HAND)


def test_an_answer_inside_think_counts_only_after_the_block_closes() -> None:
    assert extract_answer("<think>\nThe answer is B.\n</think>\n\nThe answer is C.", HAND) == "C"
    assert extract_answer("<think>\nThe answer is B.\n</think>\n\n", HAND) is None


def test_a_line_that_continues_the_option_list_is_an_echo() -> None:
    assert echoes_options("D. no", PUBMED) and extract_answer("D. no", PUBMED) is None


def test_it_is_not_an_article_does_not_retract_the_answer() -> None:
    assert extract_answer("The answer is C. It is not a rare finding in ulnar entrapment.", HAND) == "C"
    assert extract_answer("The answer is C. Wait, it is not C.", HAND) is None


def test_a_cut_off_output_is_not_read_from_its_unfinished_last_line() -> None:
    text = "Restating the question: which is the most likely etiology?\nA"
    assert extract_answer(text, HAND) == "A"  # ended by EOS: a bare last line answers
    assert extract_answer(text, HAND, complete=False) is None  # hit max_new_tokens: the line was cut
    assert extract_answer("The answer is B.\n\nA. Carpal tunnel syndrome", HAND, complete=False) == "B"


# --- issue 22.10: endings without a classic cue (written for these tests; each kind >= 20) ----------------------------
MARFAN = {"A": "Ehlers-Danlos syndrome", "B": "Marfan syndrome", "C": "Homocystinuria", "D": "Loeys-Dietz syndrome",
          "E": "Klinefelter syndrome"}
THYROID = {"A": "Hypothyroidism", "B": "Subclinical hypothyroidism", "C": "Hyperthyroidism", "D": "Euthyroid sick syndrome"}
YESNO = {"A": "yes", "B": "no"}
YESNO_CAP = {"A": "Yes", "B": "No"}
OPTION_SETS.update(MARFAN=MARFAN, THYROID=THYROID, YESNO=YESNO, YESNO_CAP=YESNO_CAP)

# (1) a bare conclusion line or sentence: "Therefore: B", "Thus, B.", "So: (B)".
CONCLUSION_ENDINGS = [
    ("Upward lens dislocation, tall stature and aortic root dilation all point to a fibrillin-1 defect.\n\nTherefore: B", "MARFAN", "B"),
    ("The intrinsic pathway is affected but there is no bleeding, and bradykinin is low, which implicates the contact "
     "factor.\nThus, D.", "FACTORS", "D"),
    ("Neck pain radiating to the thumb with a weak biceps reflex localises to the nerve root, not the wrist.\nSo: (B)", "HAND", "B"),
    ("Rigidity, hyperthermia and a raised CK two days after starting haloperidol.\n\nHence, C.", "NMS", "C"),
    ("Numbness in the fourth and fifth fingers that worsens with elbow flexion, plus a positive Froment sign.\n"
     "**Therefore: C**", "HAND", "C"),
    ("A cat-like cry in a newborn with microcephaly is classic for a deletion on the short arm of chromosome 5.\n\n"
     "In conclusion: B", "CHROMO", "B"),
    ("She has failed topical therapy and has nodulocystic scarring lesions, so systemic retinoid therapy is indicated.\n"
     "Conclusion: C", "ACNE", "C"),
    ("A normal PT rules out factor VII and the absent bleeding history rules out VIII and IX. Therefore, (D).", "FACTORS", "D"),
    ("Heat stroke would not explain the lead-pipe rigidity, and catatonia lacks the autonomic instability. Thus: C", "NMS", "C"),
    ("- Lens: upward\n- Joints: hypermobile\n- Aorta: dilated root\n\nSo, B.", "MARFAN", "B"),
    ("Everything fits a lesion at the thoracic inlet compressing the lower trunk of the plexus.\n\nVerdict: D", "HAND", "D"),
    ("Ultimately, (A) — the median nerve at the wrist explains the thenar wasting and night-time symptoms.", "HAND", "A"),
    ("Mild papulopustular acne that has not responded to benzoyl peroxide alone.\nOverall: E. Topical antibiotics", "ACNE", "E"),
    ("Ectopia lentis superotemporally, a positive wrist sign and mitral valve prolapse.\nTherefore: B) Marfan syndrome", "MARFAN", "B"),
    ("Congenital pseudobulbar palsy with perisylvian polymicrogyria on MRI.\n\nThus, C — Worster-Drought syndrome.", "WORSTER", "C"),
    ("Both the PT and the bleeding time are normal and he has never bled after dental work.\nHence: D", "FACTORS", "D"),
    ("The 5p deletion explains the cry, the microcephaly and the hypertelorism; so, B.", "CHROMO", "B"),
    ("Haloperidol, fever of 40 C, rigidity and a CK of 12,000.\n\nPutting it all together.\n\nTherefore, option C.", "NMS", "C"),
    ("Conduction is fastest in Purkinje fibres, then atria, then ventricles, and slowest in the AV node.\nIn summary: D.",
     "CONDUCTION", "D"),
    ("Urine collects in the bladder between voids; the ureters and urethra only conduct it.\n\nThus: A", "BLADDER", "A"),
    ("Antibody production requires plasma cells, which derive from B lymphocytes, so the defect is humoral.\nTherefore: C",
     "CELLS", "C"),
    ("The pooled estimate shows a significant reduction in mortality with the intervention.\n\nTherefore: yes", "PUBMED", "A"),
    ("Superotemporal lens subluxation and a positive thumb sign.\nBottom line: B.", "MARFAN", "B"),
    ("All in all, D. Factor XII deficiency prolongs the PTT without causing bleeding.", "FACTORS", "D"),
    ("Thenar atrophy and a positive Phalen test.\n> Therefore: A", "HAND", "A"),
    ("So: A.\nWait, the lens dislocates downward in homocystinuria, not upward.\nSo: B.", "MARFAN", "B"),
]

# (2) "Among the options, B best explains ...": a selection among the options with a superlative.
AMONG_ENDINGS = [
    ("The tall habitus, arachnodactyly and superotemporal lens subluxation all point to fibrillin-1.\n\n"
     "Among the options, B best explains the full picture.", "MARFAN", "B"),
    ("Fever, lead-pipe rigidity and autonomic lability started after haloperidol. Of the choices, C is most consistent "
     "with this presentation.", "NMS", "C"),
    ("A long PTT, normal PT and no bleeding at all. Among the answer choices, D best accounts for these labs.", "FACTORS", "D"),
    ("Of these, option A fits best: thenar wasting with nocturnal paresthesias and a positive Tinel sign.", "HAND", "A"),
    ("Out of the given options, (B) most closely matches a C6-C7 root lesion with neck pain.", "HAND", "B"),
    ("Comedones and a few inflamed papules only. Of all the choices, E is the most appropriate first step.", "ACNE", "E"),
    ("Among the listed options, C is the best fit for a child with congenital suprabulbar paresis.", "WORSTER", "C"),
    ("Of the five options, B is the only one that explains the high-pitched cry and the microcephaly.", "CHROMO", "B"),
    ("Hemophilias bleed, and this boy does not. Among them, D is the likeliest given the normal PT.", "FACTORS", "D"),
    ("Among the options, Marfan syndrome best explains the lens dislocation and aortic root dilation.", "MARFAN", "B"),
    ("Of the choices provided, hypothyroidism is most consistent with the elevated TSH and the low free T4.", "THYROID", "A"),
    ("The timing after the antipsychotic is key.\nAmong the options above, C stands out as the correct answer.", "NMS", "C"),
    ("Ehlers-Danlos does not dislocate the lens and homocystinuria dislocates it downward. Of the remaining options, "
     "B is clearly the best.", "MARFAN", "B"),
    ("From the options given, D — Factor XII — best fits a prolonged PTT without bleeding.", "FACTORS", "D"),
    ("Among the four options, A explains the thenar atrophy best.", "HAND", "A"),
    ("Among the diagnoses offered, B (spinal muscular atrophy) is the most likely, given the tongue fasciculations.",
     "WORSTER", "B"),
    ("Factor VII would prolong the PT instead. Of these choices, D is most likely to produce an isolated long PTT.", "FACTORS", "D"),
    ("She has scarring nodules despite two antibiotic courses. Among all the options, C represents the best next step.",
     "ACNE", "C"),
    ("Of the possibilities listed, B is the strongest candidate for a tall patient with a dilated aortic root.", "MARFAN", "B"),
    ("Among the options, the best fit is B.", "MARFAN", "B"),
    ("Of the choices, 5p is most consistent with cri-du-chat syndrome.", "CHROMO", "B"),
    ("Among the options offered, oversedation best explains the drowsy, hypotonic patient with normal vital signs.", "NMS", "D"),
    ("Among these, option E most directly addresses the inflamed papules without systemic exposure.", "ACNE", "E"),
    ("A. Ehlers-Danlos — skin hyperextensibility, absent here.\nB. Marfan — lens up, tall, aortic root.\n"
     "C. Homocystinuria — lens down, intellectual disability.\n\nOf the choices, B is most consistent with this patient.",
     "MARFAN", "B"),
]

# (3) a hedge that names two options gives no answer, also after an earlier commit.
HEDGE_ENDINGS = [
    ("The lens findings are equivocal on slit lamp. The answer is A or maybe B.", "MARFAN", None),
    ("Given the overlap between root and plexus lesions, the answer is either B or C.", "HAND", None),
    ("The sensory loss does not settle it.\nFinal answer: B, or possibly D.", "HAND", None),
    ("Both fit a dopamine antagonist. I think the answer is C, or perhaps A.", "NMS", None),
    ("Neck and hand symptoms overlap here. It's B, or maybe D.", "HAND", None),
    ("The labs are borderline. The answer is D (or possibly B).", "FACTORS", None),
    ("So the answer is B or perhaps C; the exam does not distinguish them well.", "HAND", None),
    ("Root versus cord compression cannot be separated clinically.\nTherefore: A or B", "HAND", None),
    ("Both syndromes dislocate the lens and dilate the aorta. I'm torn between B and D.", "MARFAN", None),
    ("The answer is I think B or C.", "HAND", None),
    ("Nodules suggest isotretinoin, yet a trial of topical therapy is reasonable. My answer would be C, or maybe E.", "ACNE", None),
    ("Among the options, B or C best explains the weakness.", "HAND", None),
    ("Rigidity fits both a dystonic and a malignant reaction. I'd say it's A, possibly C.", "NMS", None),
    ("Without a CK we cannot be sure; the answer could be either A or C.", "NMS", None),
    ("Earlier I said the answer is A. Now I think it's A or maybe B.", "MARFAN", None),
    ("The answer is C. Hmm, though it might be B or D.", "FACTORS", None),
    ("Answer: B or D — both are plausible with this history.", "HAND", None),
    ("The data are inconsistent across subgroups. The answer is yes, or possibly no.", "PUBMED", None),
    ("The most likely diagnosis is Marfan syndrome or possibly Loeys-Dietz syndrome.", "MARFAN", None),
    ("So: (B) or (D)", "HAND", None),
    ("I believe it's C or maybe D; the presentation is atypical.", "FACTORS", None),
    ("Correct option: A, or alternatively C.", "NMS", None),
    ("A cat cry points to chromosome 5. The answer is either 5p or 5q.", "CHROMO", None),
    ("The answer is B. On reflection I can't decide between B and D.", "MARFAN", None),
]

# (4) a first-person answer: "I think it's B", "The answer is I think B", "My answer would be D".
BELIEF_ENDINGS = [
    ("Lead-pipe rigidity and fever started two days after haloperidol. I think it's C.", "NMS", "C"),
    ("The dermatomal pattern and the neck pain fit a root lesion. The answer is I think B.", "HAND", "B"),
    ("Bradykinin is low and nothing bleeds. I believe the answer is C.", "FACTORS", "C"),
    ("No bleeding, long PTT, low bradykinin. My answer would be D.", "FACTORS", "D"),
    ("I'm fairly confident it's B given the upward lens subluxation and the aortic root.", "MARFAN", "B"),
    ("Tall, hypermobile, lens up and out.\nI'd say B.", "MARFAN", "B"),
    ("The Spurling test reproduced the pain. Honestly, I think B is the best answer here.", "HAND", "B"),
    ("A contact-factor defect does not bleed. I'm going with D.", "FACTORS", "D"),
    ("I lean towards A, since nocturnal symptoms and a positive Tinel sign at the wrist are classic.", "HAND", "A"),
    ("Hyperthermia and rigidity after an antipsychotic: I believe it is option C.", "NMS", "C"),
    ("I suspect it's B — the cry is nearly pathognomonic.", "CHROMO", "B"),
    ("A few inflamed papules on the cheeks. My best guess is E.", "ACNE", "E"),
    ("Bilateral facial and bulbar weakness since birth, with normal intellect. The answer is, I think, C.", "WORSTER", "C"),
    ("The hand is cold and pale when the arm is raised. I'm pretty sure it's (D).", "HAND", "D"),
    ("Of the two root levels, C6-C7 fits the triceps weakness. I think the correct choice here is B.", "HAND", "B"),
    ("I feel like it's B, given the arachnodactyly and the tall stature.", "MARFAN", "B"),
    ("I'm leaning toward C, given the positive Froment sign and the elbow tenderness.", "HAND", "C"),
    ("I think it has to be D: nothing else gives a long PTT without bleeding.", "FACTORS", "D"),
    ("With the lens up and the aortic root dilated, I believe Marfan syndrome is the diagnosis.", "MARFAN", "B"),
    ("Autonomic instability and a CK in the thousands. I'm confident the answer is C.", "NMS", "C"),
    ("Lens up, long limbs, normal intellect. My pick is B.", "MARFAN", "B"),
    ("Personally, I'd go for E, topical antibiotics, before anything systemic.", "ACNE", "E"),
    ("Urine is stored, not conducted, so I reckon it's A.", "BLADDER", "A"),
    ("The timing after haloperidol settles it. The answer is I believe C.", "NMS", "C"),
]

# (5) yes/no questions answered by the word: "Yes, ...", "No." as the last line, "In conclusion, yes".
YES_NO_ENDINGS = [
    ("The randomized trial showed a 30% relative reduction in stroke with anticoagulation (p<0.001).\n\n"
     "Yes, anticoagulation reduces stroke risk in this population.", "YESNO", "A"),
    ("There was no difference in the primary endpoint between arms, and the confidence interval crossed 1.\nNo.", "YESNO_CAP", "B"),
    ("The effect held in every sensitivity analysis. The answer is yes.", "YESNO_CAP", "A"),
    ("Yes. The cohort showed a dose-dependent association that persisted after adjustment for smoking.", "YESNO", "A"),
    ("No — the observed association disappeared after adjusting for confounders.", "YESNO", "B"),
    ("Length of stay fell from 9 to 6 days in the intervention arm.\nIn conclusion, yes, early mobilization shortened "
     "length of stay.", "YESNO", "A"),
    ("Mortality was 4.1% with screening and 4.2% without.\n\nSo, no: the screening program did not reduce mortality.",
     "YESNO_CAP", "B"),
    ("Sensitivity 92%, specificity 89%, externally validated.\nOverall: Yes.", "YESNO_CAP", "A"),
    ("Based on these data, the answer is no.", "YESNO", "B"),
    ("Short answer: no. The study was underpowered and the effect estimate was imprecise.", "YESNO", "B"),
    ("No.\n\nThe hazard ratio was 0.98 (95% CI 0.85-1.12), so there is no evidence of benefit.", "YESNO_CAP", "B"),
    ("**Yes**, the intervention was associated with lower readmission rates at 30 days.", "YESNO_CAP", "A"),
    ("Neither the primary nor the secondary outcomes improved.\n\nTherefore, no.", "YESNO", "B"),
    ("Looking at the results, sensitivity was 94% and specificity 91%, which is adequate for screening.\nYes", "YESNO", "A"),
    ("Yes — the biomarker predicted recurrence independently of stage and grade.", "YESNO", "A"),
    ("The authors conclude that the supplement did not help.\n\nNo, it does not improve outcomes.", "YESNO_CAP", "B"),
    ("The odds ratio was 2.3 and remained significant after adjustment.\nThus: yes", "YESNO", "A"),
    ("Every subgroup moved in the same direction. So yes, the association holds.", "YESNO", "A"),
    ("Answer: No", "YESNO_CAP", "B"),
    ("Hence, yes. Statin use was associated with fewer cardiovascular events.", "YESNO", "A"),
    ("The difference was neither clinically nor statistically meaningful.\nFinal conclusion: No.", "YESNO", "B"),
    ("Both the unadjusted and adjusted analyses agree.\n\nYes, smoking cessation improved lung function at one year.",
     "YESNO_CAP", "A"),
    ("No. While the trend favoured treatment, it was not statistically significant.", "YESNO", "B"),
    ("The primary outcome did not differ, p = 0.41.\nIn short, no.", "YESNO_CAP", "B"),
    ("Pain scores fell by half in the treated group.\nYes.", "PUBMED", "A"),
]

# (6) the answer given only as an option's exact text.
OPTION_TEXT_ENDINGS = [
    ("The tall stature, ectopia lentis and aortic root dilation point to a fibrillin disorder.\n\n"
     "The answer is Marfan syndrome.", "MARFAN", "B"),
    ("Elevated TSH with low free T4, cold intolerance and constipation.\n\nHypothyroidism", "THYROID", "A"),
    ("TSH is mildly elevated but free T4 is normal and she has no symptoms.\nSubclinical hypothyroidism", "THYROID", "B"),
    ("Suppressed TSH, high free T4, tremor and weight loss.\n\n**Hyperthyroidism**", "THYROID", "C"),
    ("Low T3 with normal TSH during septic shock, no thyroid history.\nDiagnosis: Euthyroid sick syndrome.", "THYROID", "D"),
    ("Downward lens dislocation, intellectual disability and a thrombosis at 20. This presentation is most consistent "
     "with Homocystinuria.", "MARFAN", "C"),
    ("Bifid uvula, hypertelorism and arterial tortuosity. The findings are best explained by Loeys-Dietz syndrome.", "MARFAN", "D"),
    ("Fever, rigidity, altered mental status and a CK of 9,000 after haloperidol.\nFinal diagnosis: Neuroleptic "
     "malignant syndrome", "NMS", "C"),
    ("Rigidity, hyperthermia and autonomic instability after an antipsychotic.\n\nNeuroleptic malignant syndrome.", "NMS", "C"),
    ("Exertion on a hot day, no drugs, dry skin, temperature 41 C. So the most likely diagnosis here is Heat stroke.", "NMS", "B"),
    ("Long PTT, normal PT, no bleeding, low bradykinin.\n\nFactor XII", "FACTORS", "D"),
    ("A long PTT with hemarthroses in a boy, corrected by mixing.\nFactor VIII", "FACTORS", "B"),
    ("Congenital pseudobulbar palsy with perisylvian changes. Putting it together, this is a classic case of "
     "Worster-Drought syndrome.", "WORSTER", "C"),
    ("Nocturnal paresthesias in the thumb, index and middle fingers.\nThus, Carpal tunnel syndrome.", "HAND", "A"),
    ("Numb ring and little fingers, worse with the elbow flexed.\nTherefore: Ulnar nerve entrapment at the elbow", "HAND", "C"),
    ("Symptoms with overhead activity and a cervical rib on X-ray. The diagnosis is Thoracic outlet syndrome.", "HAND", "D"),
    ("Severe nodulocystic acne with scarring despite antibiotics.\n\nIsoretinoin.", "ACNE", "C"),
    ("Mild inflammatory acne, no prior treatment.\nTopical antibiotics", "ACNE", "E"),
    ("The high-pitched cry localises the deletion to the short arm of chromosome 5.\n\n5p", "CHROMO", "B"),
    ("The prostatic portion carries urine from the bladder neck to the penile portion.\nUrethra", "BLADDER", "D"),
    ("Tall, hypogonadal, gynecomastia and small firm testes; karyotype 47,XXY.\nMy final diagnosis is Klinefelter syndrome.",
     "MARFAN", "E"),
    ("Stretchy skin and atrophic scars with hypermobile joints, no lens problems.\nDiagnosis: Ehlers-Danlos syndrome", "MARFAN", "A"),
    ("Recurrent viral infections and no response to tumour cells in vitro.\n\nNatural killer cells", "CELLS", "D"),
    ("Absent thymic shadow and recurrent fungal infections point to cellular immunity.\nT cells", "CELLS", "B"),
    ("In summary, the findings are most compatible with Subclinical hypothyroidism.", "THYROID", "B"),
]

NEW_KINDS = {"conclusion": CONCLUSION_ENDINGS, "among": AMONG_ENDINGS, "hedge": HEDGE_ENDINGS, "belief": BELIEF_ENDINGS,
             "yes_no": YES_NO_ENDINGS, "option_text": OPTION_TEXT_ENDINGS}
NEW_ENDINGS = [(f"{kind}_{i:02d}", *case) for kind, cases in NEW_KINDS.items() for i, case in enumerate(cases)]


@pytest.mark.parametrize(("text", "options_name", "expected"), [c[1:] for c in NEW_ENDINGS], ids=[c[0] for c in NEW_ENDINGS])
def test_issue22_endings_read_as_expected(text: str, options_name: str, expected: str | None) -> None:
    assert extract_answer(text, OPTION_SETS[options_name]) == expected


def test_issue22_each_kind_has_at_least_20_varied_endings() -> None:
    for kind, cases in NEW_KINDS.items():
        assert len(cases) >= 20 and len({c[0] for c in cases}) == len(cases), kind
    assert all(c[2] is None for c in HEDGE_ENDINGS)


# Near misses: letters mentioned in reasoning, option texts inside longer phrases, denials and questions.
NEAR_MISSES = [
    ("option_wrong_because", "Option A is wrong because Ehlers-Danlos does not dislocate the lens.", "MARFAN", None),
    ("options_ruled_out", "Option A is incorrect. Option C is unlikely as well.", "MARFAN", None),
    ("among_least_likely", "Among the options, A is the least likely.", "MARFAN", None),
    ("among_not_best", "Of the choices, B is not the best fit for the fever.", "NMS", None),
    ("among_does_not_explain", "Of the choices, B does not explain the fever.", "NMS", None),
    ("among_list_excluded", "Among the options, B, C and D are wrong for different reasons.", "MARFAN", None),
    ("thus_two_excluded", "Thus, B and C can be excluded.", "HAND", None),
    ("thus_letter_is_wrong", "Thus, B is wrong, since there is no neck pain.", "HAND", None),
    ("so_c_difficile", "Therefore, C. difficile toxin should be tested.", "HAND", None),
    ("so_e_coli", "Thus, E. coli is the most likely organism.", "ACNE", None),
    ("so_b_cells_not_option", "So B cells are not involved here.", "HAND", None),
    ("so_b_cells_is_option_c", "Antibodies are absent.\nSo, B cells.", "CELLS", "C"),
    ("therefore_question", "Therefore: B?", "HAND", None),
    ("i_think_a_is_wrong", "I think A is wrong because the lens dislocates upward.", "MARFAN", None),
    ("i_dont_think", "I don't think it's B.", "MARFAN", None),
    ("do_i_think_question", "Do I think it's B? Not really.", "MARFAN", None),
    ("i_think_not_sure", "I think it's B, but I'm not sure. Let me think again.", "MARFAN", None),
    ("i_think_b_cells", "I think B cells are the key here.", "HAND", None),
    ("line_longer_than_option", "Low free T4 on amiodarone.\nHypothyroidism secondary to amiodarone", "THYROID", None),
    ("line_option_inside_phrase", "Low TSH and low T4.\nCentral hypothyroidism", "THYROID", None),
    ("cue_short_option_text", "The answer is hypothyroidism.", "THYROID", "A"),
    ("cue_longer_option_text", "The answer is subclinical hypothyroidism.", "THYROID", "B"),
    ("most_consistent_other_disease", "This is most consistent with central hypothyroidism.", "THYROID", None),
    ("line_factor_vii_not_viii", "The PT is prolonged alone.\nFactor VII", "FACTORS", "A"),
    ("twin_texts_last_line", "Reasoning.\nMatrix protein", {"A": "Matrix protein", "B": "Matrix protein", "C": "Hemagglutinin"}, None),
    ("no_significant_difference", "No significant difference was found between the groups.", "YESNO", None),
    ("so_no_further", "So no further testing is needed before concluding.", "YESNO", None),
    ("yes_and_no", "Yes and no: the effect depended on age.", "YESNO", None),
    ("no_wait", "No, wait — let me re-read the abstract.", "YESNO", None),
    ("yes_on_non_yes_no_question", "Yes, that is consistent with median nerve compression.", "HAND", None),
    ("yes_mid_reasoning", "Was the trial randomized?\nYes, it was.\nThe primary outcome is still unclear.", "YESNO", None),
    ("someone_elses_hedge", "The answer is B. Some argue it could be A or C, but the labs refute that.", "MARFAN", "B"),
    ("rather_than_is_a_choice", "Of the choices, B rather than D best explains the lens.", "MARFAN", "B"),
    ("answer_then_other_option_mentioned", "The answer is D. Option A is wrong because it would prolong the PT.", "FACTORS", "D"),
]


@pytest.mark.parametrize(("text", "options", "expected"), [c[1:] for c in NEAR_MISSES], ids=[c[0] for c in NEAR_MISSES])
def test_issue22_near_misses(text: str, options: str | dict, expected: str | None) -> None:
    assert extract_answer(text, OPTION_SETS[options] if isinstance(options, str) else options) == expected


def test_a_cut_off_conclusion_line_may_still_go_on() -> None:
    """complete=False drops a conclusion, yes/no or option-text reading on the last line, as it does a bare letter."""
    assert extract_answer("Lens up.\nTherefore: B", MARFAN) == "B"
    assert extract_answer("Lens up.\nTherefore: B", MARFAN, complete=False) is None  # 'Therefore: B cells ...'
    assert extract_answer("Lens up.\nTherefore: B\n\nThe aortic root", MARFAN, complete=False) == "B"  # the line ended
    assert extract_answer("Cold intolerance.\nHypothyroidism", THYROID, complete=False) is None
    assert extract_answer("Yes, the", YESNO, complete=False) is None
    assert extract_answer("Yes.\nThe trial showed", YESNO, complete=False) == "A"
    # Readings with their own cue work like 'The answer is B' on a cut-off output.
    assert extract_answer("I think it's B.", MARFAN, complete=False) == "B"
    assert extract_answer("Among the options, B best explains", MARFAN, complete=False) == "B"


HAS_COMMITTED_NEW = [
    ("conclusion_line_ended", "Lens up.\nTherefore: B\n", True),
    ("conclusion_line_bold_ended", "**Thus, (D).**\n", True),
    ("conclusion_text_line_ended", "Therefore: Marfan syndrome\n", True),
    ("conclusion_line_may_go_on", "Lens up.\nTherefore: B", False),
    ("conclusion_abbreviation", "Therefore, C. difficile", False),
    ("conclusion_b_cells", "So, B cells\n", False),
    ("among_best", "Among the options, B best explains", True),
    ("among_most_unlikely", "Among the options, B is most unlikely ", False),
    ("among_not_best", "Among the options, B is not the best", False),
    ("belief_is_a_guess", "I think it's B.", False),
    ("bare_text_line", "Hypothyroidism\n", False),
    ("hedge_not_committed", "The answer is A or maybe B", False),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in HAS_COMMITTED_NEW], ids=[c[0] for c in HAS_COMMITTED_NEW])
def test_has_committed_answer_new_firm_commits(text: str, expected: bool) -> None:
    assert has_committed_answer(text, MARFAN if "Marfan" in text or "Among" in text else HAND) is expected


def test_has_committed_answer_never_stops_on_an_unreadable_prefix() -> None:
    """Where a growing new ending first counts as committed, extract_answer reads that prefix (the sampler stops there)."""
    for name, text, options, _ in NEW_ENDINGS + [(c[0], *c[1:]) for c in NEAR_MISSES]:
        opts = OPTION_SETS[options] if isinstance(options, str) else options
        first = next((i for i in range(1, len(text) + 1) if has_committed_answer(text[:i], opts)), None)
        if first is not None:
            assert extract_answer(text[:first], opts) is not None, (name, text[:first])


def test_firm_new_endings_count_as_committed() -> None:
    """A conclusion line ended by a newline and 'Among the options, X best ...' stop a sampler; guesses do not."""
    assert has_committed_answer(CONCLUSION_ENDINGS[0][0] + "\n", MARFAN)
    assert has_committed_answer(AMONG_ENDINGS[0][0], MARFAN)
    assert not has_committed_answer(BELIEF_ENDINGS[0][0], NMS)
