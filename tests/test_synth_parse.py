"""Parsing and validating generated questions, and the contamination index."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from medssr.config import load_params
from medssr.data.loaders import load_benchmarks, load_medmcqa
from medssr.records import Question, validate_question
from medssr.synth.contamination import OverlapIndex, build_index, question_text
from medssr.synth.parse import QUESTION_SCHEMA, REASONS, InvalidQuestion, ParsedQuestion, parse_question, validate
from tests.conftest import RAW, ROOT

STEM = ("A 34-year-old woman presents with progressive proximal muscle weakness, a heliotrope rash and Gottron papules. "
        "Which of the following is the most appropriate next step in confirming the diagnosis?")
OPTS = {"A": "Muscle biopsy", "B": "Serum vitamin B12 level", "C": "Nerve conduction study of the sural nerve", "D": "Lumbar puncture"}


def js(stem: str = STEM, options: dict | None = None, answer: str = "A", **extra) -> str:
    return json.dumps({"question": stem, "options": OPTS if options is None else options, "answer": answer, **extra})


def reason(text: str, finish_reason: str | None = None) -> str:
    with pytest.raises(InvalidQuestion) as e:
        parse_question(text, finish_reason)
    return e.value.reason


@pytest.fixture(scope="module")
def benchmarks() -> dict[str, list[Question]]:
    return load_benchmarks(load_params(ROOT / "params.yaml").data.benchmarks, RAW)  # every declared benchmark


# -- accepted layouts -----------------------------------------------------------------------------------
def test_json_reply_is_parsed_into_stem_options_and_generator_answer():
    pq = parse_question(js(answer="A", explanation="ignored"))
    assert pq == ParsedQuestion(STEM, OPTS, "A", "json")


def test_json_in_a_code_fence_or_after_a_preamble_is_accepted():
    assert parse_question("```json\n" + js() + "\n```").options == OPTS
    assert parse_question("Here is a new question:\n" + js(answer="D") + "\nHope this helps.").answer == "D"


def test_null_fifth_option_means_four_options_and_a_real_fifth_is_kept():
    assert list(parse_question(js(options={**OPTS, "E": None})).options) == list("ABCD")
    assert parse_question(js(options={**OPTS, "E": "Electromyography"}, answer="E")).options["E"] == "Electromyography"


def test_plain_text_layout_is_accepted():
    text = "Question: " + STEM + "\nA. Muscle biopsy\nB) Serum vitamin B12 level\n(C) Nerve conduction study\nD. Lumbar puncture\nAnswer: A\nExplanation: ..."
    pq = parse_question(text)
    assert pq.question == STEM and pq.answer == "A" and pq.layout == "text"
    assert pq.options == {"A": "Muscle biopsy", "B": "Serum vitamin B12 level", "C": "Nerve conduction study", "D": "Lumbar puncture"}


def test_plain_text_options_label_is_not_part_of_the_stem_and_repeated_letters_are_rejected():
    pq = parse_question(f"Question: {STEM}\nOptions:\nA. Muscle biopsy\nB. EMG\nC. CK level\nD. MRI\nAnswer: A")
    assert pq.question == STEM
    assert reason(f"{STEM}\nA) Proteinuria\nB) Rickets\nC) Hematuria\nD) Acidosis\nD) Acidosis\nAnswer: C") == "option_count"


def test_plain_text_option_continuation_lines_join_the_option():
    pq = parse_question(f"{STEM}\nA. Muscle\nbiopsy\nB. Serum B12\nC. Nerve conduction\nD. Lumbar puncture\n\nThe correct answer is C")
    assert pq.options["A"] == "Muscle biopsy" and pq.answer == "C"


def test_option_text_repeating_its_own_letter_is_cleaned():
    pq = parse_question(js(options={"A": "A. Muscle biopsy", "B": "(B) Serum B12", "C": "C) EMG", "D": "D. Lumbar puncture"}))
    assert pq.options == {"A": "Muscle biopsy", "B": "Serum B12", "C": "EMG", "D": "Lumbar puncture"}


def test_schema_requires_four_options_and_allows_a_nullable_fifth():
    opts = QUESTION_SCHEMA["properties"]["options"]
    assert opts["additionalProperties"] is False and QUESTION_SCHEMA["additionalProperties"] is False
    assert opts["properties"]["E"]["type"] == ["string", "null"] and all(opts["properties"][k]["type"] == "string" for k in "ABCD")


# -- rejections, one reason each ------------------------------------------------------------------------
@pytest.mark.parametrize("text,expected", [
    ("", "empty"),
    ('{"question": "' + STEM + '", "options": {"A": "x"', "bad_json"),
    ("I cannot write medical questions.", "no_question_format"),
    (js(answer=""), "missing_answer"),
    (f"{STEM}\nA. a1\nB. b1\nC. c1\nD. d1", "missing_answer"),
    (js(answer="F"), "bad_answer"),
    (js(answer="E"), "bad_answer"),
    (js(options={"A": "x", "B": "y", "C": "z"}), "option_count"),
    (js(options={"A": "x", "B": "y", "D": "z", "E": "w"}), "option_count"),
    (js(options={**OPTS, "C": "  "}), "empty_option"),
    (js(options={**OPTS, "C": "muscle  BIOPSY."}), "duplicate_options"),
    (js(stem="What causes fever?"), "stem_too_short"),
    (js(stem="A patient. " * 250), "stem_too_long"),
    (js(options={**OPTS, "B": "word " * 70}), "option_too_long"),
    (js(stem=STEM + "\nA. Muscle biopsy\nB. EMG"), "options_in_stem"),
    (js(stem="According to the passage above, which finding best supports the diagnosis in this 40-year-old man?"), "not_self_contained"),
    (js(stem="Based on the seed question, which enzyme is deficient in this child with hypoglycemia and hepatomegaly?"), "not_self_contained"),
    (js(stem="A child with {rare_disease} presents with seizures and developmental delay. What is the mechanism?"), "placeholder"),
    (js(options={**OPTS, "D": "[LETTER]"}), "placeholder"),
    (js(stem="The question stem", answer="the letter of the correct option"), "placeholder"),
    (js(options={"A": "first option", "B": "second option", "C": "third option", "D": "fourth option"}), "placeholder"),
    (js(options={**OPTS, "D": "All of the above"}), "all_of_the_above"),
    (js(stem="A, B, C, D, E, F, H, I, J, K, L, M, N, O, Q, R, S, T, U, Y, Z, Z, W, Y, Z, Y"), "degenerate"),
    (js(stem="Steroids are a double-edged sword. " * 5 + "What is the mechanism?"), "degenerate"),
    (js(stem="Which of the following best describes the medical knowledge provided in the question for this patient?"), "not_self_contained"),
    (js(options={**OPTS, "D": "Both A and B"}), "combination_option"),
    (js(options={**OPTS, "D": "None of the above"}, answer="D"), "none_of_the_above"),
    (js(options={**OPTS, "B": "None of the above"}), "none_of_the_above"),
])
def test_invalid_reply_is_rejected_with_its_reason(text, expected):
    assert expected in REASONS
    assert reason(text) == expected


def test_none_of_the_above_is_accepted_as_the_last_distractor():
    pq = parse_question(js(options={**OPTS, "D": "None of the above"}, answer="A"))
    assert pq.options["D"] == "None of the above"


def test_reply_cut_at_max_tokens_is_truncated_not_bad_json():
    cut = js()[:120]
    assert reason(cut) == "bad_json"
    assert reason(cut, finish_reason="length") == "truncated"
    assert parse_question(js(), finish_reason="length").answer == "A"  # complete despite the limit: fine


def test_clinical_uses_of_context_and_passage_are_not_prompt_references():
    ok = ("In the context of sepsis, a 60-year-old man has delayed passage of stool and the findings described above. "
          "Which of the following is the most likely cause?")
    assert parse_question(js(stem=ok)).question == ok


def test_real_benchmark_questions_pass_validation(benchmarks):
    """The rules must not reject real exam questions for the wrong reasons: 4-5 option MedQA/Medbullets pass."""
    counts: Counter[str] = Counter()
    for name in ("medqa", "medbullets"):
        for q in benchmarks[name]:
            try:
                validate(ParsedQuestion(q.question, q.options, q.answer, "json"))
                counts["ok"] += 1
            except InvalidQuestion as e:
                counts[e.reason] += 1
    total = sum(counts.values())
    assert counts["ok"] / total > 0.98, counts
    assert counts["not_self_contained"] == counts["placeholder"] == counts["options_in_stem"] == 0, counts
    assert counts["degenerate"] <= 2, counts


def test_validated_question_builds_a_valid_record():
    pq = parse_question(js())
    q = validate_question({"id": "synth-s0-000001", "source": "synthetic", "split": "train", "question": pq.question, "options": pq.options})
    assert q.answer is None


# -- contamination ----------------------------------------------------------------------------------------
def test_contamination_index_finds_the_known_medmcqa_dev_benchmark_overlap(benchmarks):
    """All 1200 MedMCQA test questions come from the dev file (MANIFEST): the index must find them by text."""
    index = build_index(benchmarks, [], [], n=8, threshold=0.5)  # all ~8.6k questions of the nine benchmarks
    dev = load_medmcqa(RAW)
    bench_ids = {q.id for q in benchmarks["medmcqa"]}
    hits = {q.id for q in dev if (m := index.match(question_text(q))) is not None and m.group == "medmcqa"}
    assert len(bench_ids & hits) >= 1195
    assert len(hits - bench_ids) <= 20  # text duplicates with other ids (the manifest counts 1208 by stem)


def test_distinct_real_questions_are_not_flagged(benchmarks):
    index = OverlapIndex(8, 0.5)
    index.add_questions("benchmark", benchmarks["mmlu"] + benchmarks["pubmedqa"] + benchmarks["bioasq"], group="other")
    flagged = sum(index.match(question_text(q)) is not None for q in benchmarks["medqa"])
    assert flagged <= 5


def test_copied_stem_with_new_options_and_near_duplicates_are_caught(benchmarks):
    src = benchmarks["medqa"][0]
    index = build_index({"medqa": [src]}, [], [], n=8, threshold=0.5)
    copied = Question("x", "synthetic", "train", src.question, {"A": "p", "B": "q", "C": "r", "D": "s"})
    m = index.match(question_text(copied))
    assert m is not None and m.kind == "benchmark" and m.group == "medqa" and m.ref_id == src.id
    new = Question("y", "synthetic", "train", STEM, OPTS)
    assert index.match(question_text(new)) is None
    index.add("synthetic", "y", question_text(new))
    reworded = Question("z", "synthetic", "train", STEM.replace("34-year-old", "35-year-old"), OPTS)
    assert index.match(question_text(reworded)).kind == "synthetic"


def test_benchmark_match_is_reported_before_a_seed_match(benchmarks):
    src = benchmarks["medqa"][1]
    index = build_index({"medqa": [src]}, [], [src], n=8, threshold=0.5)
    assert index.match(question_text(src)).kind == "benchmark"


# -- run-away replies ---------------------------------------------------------------------------------------
def test_a_reply_listing_more_options_than_letters_is_rejected_not_a_crash():
    """Seen from SmolLM2 in a real sweep: a run-away list of options (A. … J. then K. …) once raised IndexError."""
    from medssr.records import LETTERS

    lines = ["Question: A 30-year-old man has fever and a rash. What is the most likely diagnosis?"]
    lines += [f"{c}. Option number {i}" for i, c in enumerate(LETTERS)]
    lines += ["A. Option number again", "Answer: A"]
    with pytest.raises(InvalidQuestion) as e:
        parse_question("\n".join(lines))
    assert e.value.reason == "option_count"
