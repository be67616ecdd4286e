"""medssr.synth.classify: the strict parsers for the reasoning/memorization and category classifier replies."""

from __future__ import annotations

import pytest

from medssr.records import CATEGORIES
from medssr.synth.classify import parse_category, parse_reasoning_label


@pytest.mark.parametrize("text,expected", [
    ("<Reasoning>", True), ("<Memorization>", False), ("  <reasoning> - for analysis questions", True),
    ("This needs <Reasoning>.", True), ("Reasoning", None), ("<Reasoning> or <Memorization>", None), ("", None),
])
def test_reasoning_label_needs_exactly_one_tag(text, expected):
    assert parse_reasoning_label(text) is expected


@pytest.mark.parametrize("text,expected", [
    ("Category: Treatment", "Treatment"), ("category: related disorders", "Related disorders"), ("Diagnosis", "Diagnosis"),
    ("**Category:** <Symptoms>", "Symptoms"), ("Category: Treatment\nBecause it asks about therapy.", "Treatment"),
    ("Category: Therapy", None), ("Category: Treatment\nCategory: Diagnosis", None), ("It is about Treatment", None),
    ("Treatment\nDiagnosis", None), ("", None),
])
def test_category_parse_is_strict(text, expected):
    assert parse_category(text) == expected
    assert expected is None or expected in CATEGORIES
