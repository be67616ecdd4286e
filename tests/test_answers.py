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
