"""medssr.data.reasoning: the reasoning-heavy seed filter (clinical vignettes in, fact recall out) and the seed cap."""

from __future__ import annotations

from medssr.data.reasoning import is_reasoning_heavy, reasoning_score, select_seeds


def test_clinical_vignette_is_reasoning_heavy(declared_benchmarks):
    q = next(q for q in declared_benchmarks["medqa"] if q.id == "medqa-000853")  # 22-year-old man, vitals, "most likely diagnosis"
    s = reasoning_score(q)
    assert s.heavy and "vignette" in s.cues and "asks_most_likely" in s.cues


def test_fact_recall_is_not_reasoning_heavy(medmcqa_dev):
    q = next(q for q in medmcqa_dev.values() if q.question == "Benzodiazepine antagonist is")
    assert not is_reasoning_heavy(q)


def test_heuristic_separates_vignette_sets_from_yes_no_sets(declared_benchmarks):
    share = {n: sum(map(is_reasoning_heavy, declared_benchmarks[n])) / len(declared_benchmarks[n]) for n in ("medqa", "medbullets", "bioasq", "pubmedqa")}
    assert share["medqa"] > 0.9 and share["medbullets"] > 0.9
    assert share["bioasq"] < 0.05 and share["pubmedqa"] < 0.05


def test_seed_cap_is_a_seeded_sample(medmcqa_dev):
    rows = list(medmcqa_dev.values())
    a = select_seeds(rows, max_seeds=20, seed=1)
    assert len(a) == 20 and a == select_seeds(rows, max_seeds=20, seed=1)
    assert [q.id for q in a] != [q.id for q in select_seeds(rows, max_seeds=20, seed=2)]
    assert select_seeds(rows, classifier=lambda q: q.answer == "A", max_seeds=None) == [q for q in rows if q.answer == "A"]
