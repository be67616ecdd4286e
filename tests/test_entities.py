"""The one rare-disease entity and name normalisation shared by tagging, corpus coverage and synthesis."""

from __future__ import annotations

from medssr.data.entities import normalize_name


def test_normalize_name_folds_case_punctuation_and_possessives():
    assert normalize_name("Crigler–Najjar's Syndrome") == "crigler najjar syndrome"
    assert normalize_name("β-thalassemia") == "beta thalassemia"
