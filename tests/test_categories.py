"""medssr.data.categories: the RareDis-Sub category of a question, from the sentence that asks it."""

from __future__ import annotations

import pytest

from medssr.data.categories import classify_text, focus_sentence


@pytest.mark.parametrize("stem, category", [
    ("A 6-month-old boy ... Which of the following is the most likely diagnosis?", "Diagnosis"),
    ("Is golodirsen effective for the treatment of Duchenne muscular dystrophy?", "Treatment"),
    ("A 17-year-old boy presents with ... Which of the following is the most appropriate next step in management?", "Treatment"),
    ("Mutations that cause achondroplasia exert an effect which can be classified as:", "Causes"),
    ("Which of the following is the most likely cause of this patient's symptoms?", "Causes"),
    ("Which of the following is a renal complication of sickle cell disease?", "Symptoms"),
    ("Regional Odontodysplasia is most common in", "Affects"),
    ("Is peripheral neuroepithelioma related to Ewing sarcoma?", "Related disorders"),
    ("Which of the following is true of Systemic Sclerosis?", "Others"),
])
def test_category_rules_on_real_stems(stem, category):
    assert classify_text(stem) == category


def test_focus_is_the_sentence_that_asks():
    stem = "A boy presents with fever and symptoms of weakness. He was treated last year. What is the most likely diagnosis?"
    assert focus_sentence(stem) == "What is the most likely diagnosis?"
    assert classify_text(stem) == "Diagnosis"
