"""The α/ρ attempt plan (Eq. 2), prompt files and request building: pure functions, no model."""

from __future__ import annotations

import gzip
import json

import pytest

from medssr.data.loaders import load_medmcqa
from medssr.llm import LLMRequest
from medssr.synth.parse import QUESTION_SCHEMA
from medssr.synth.plan import PRIOR_TAGGED, entity_pool, plan, plan_attempt, share_quotas, steer_alpha
from medssr.synth.prompts import PROMPT_NAMES, PromptError, load_prompt
from medssr.synth.run import build_request, format_knowledge, synth_section
from tests.conftest import RAW


@pytest.fixture(scope="module")
def orphanet_names() -> list[str]:
    with gzip.open(RAW / "rare_disease" / "orphanet_diseases.jsonl.gz", "rt", encoding="utf-8") as fh:
        return [json.loads(line)["name"] for _, line in zip(range(500), fh, strict=False)]


@pytest.fixture(scope="module")
def seeds():
    return [q for q in load_medmcqa(RAW) if len(q.question) >= 100][:60]


def test_achieved_rare_ratio_is_near_alpha_over_400_attempts(orphanet_names):
    attempts = plan(0, 400, seed=0, alpha=0.25, n_seeds=100, entities=orphanet_names)
    share = sum(a.kind == "F2" for a in attempts) / len(attempts)
    assert abs(share - 0.25) <= 0.06


@pytest.mark.parametrize("seed", [1, 7, 123])
def test_achieved_rare_ratio_holds_for_other_seeds_and_alphas(seed, orphanet_names):
    for alpha in (0.13, 0.33, 0.5):
        share = sum(a.kind == "F2" for a in plan(0, 400, seed, alpha, 100, orphanet_names)) / 400
        assert abs(share - alpha) <= 0.06, (seed, alpha, share)


def test_alpha_zero_never_uses_f2_and_alpha_one_always_does(orphanet_names):
    assert all(a.kind == "F1" and a.rare_disease is None for a in plan(0, 300, 0, 0.0, 50, orphanet_names))
    assert all(a.kind == "F2" and a.rare_disease in orphanet_names for a in plan(0, 300, 0, 1.0, 50, orphanet_names))


def test_plan_of_an_attempt_depends_only_on_seed_and_index(orphanet_names):
    forward = plan(0, 50, 3, 0.25, 80, orphanet_names)
    single = [plan_attempt(i, 3, 0.25, 80, orphanet_names) for i in reversed(range(50))][::-1]
    assert forward == single
    assert plan(20, 30, 3, 0.25, 80, orphanet_names) == forward[20:30]  # a rerun with larger n or after a crash
    assert plan(0, 50, 4, 0.25, 80, orphanet_names) != forward


def test_seed_pair_and_rho_do_not_depend_on_alpha(orphanet_names):
    low, high = plan(0, 100, 0, 0.1, 80, orphanet_names), plan(0, 100, 0, 0.6, 80, orphanet_names)
    assert [(a.rho, a.seed_indices) for a in low] == [(a.rho, a.seed_indices) for a in high]
    # attempts that are F.1 at both ratios are the very same plan (so the same cached request)
    both_f1 = [(x, y) for x, y in zip(low, high, strict=True) if x.kind == y.kind == "F1"]
    assert both_f1 and all(x == y for x, y in both_f1)


def test_two_distinct_seed_questions_per_attempt(orphanet_names):
    assert all(a.seed_indices[0] != a.seed_indices[1] for a in plan(0, 500, 0, 0.25, 3, orphanet_names))


def test_alpha_above_zero_without_entities_is_an_error():
    with pytest.raises(ValueError, match="rare-disease list is empty"):
        plan(0, 50, 0, 1.0, 10, [])
    with pytest.raises(ValueError, match="at least 2 seed"):
        plan_attempt(0, 0, 0.0, 1, ["x"])


def test_prefer_covered_draws_only_entities_with_corpus_coverage(orphanet_names):
    coverage = {orphanet_names[3]: ["p1"], orphanet_names[10]: ["p2", "p3"], "not in list": ["p4"], orphanet_names[5]: []}
    assert entity_pool(orphanet_names, coverage, True) == [orphanet_names[3], orphanet_names[10]]
    assert entity_pool(orphanet_names, coverage, False) == orphanet_names
    assert entity_pool(orphanet_names, {}, True) == orphanet_names  # no coverage data: fall back, with a warning


def test_prompt_files_carry_the_paper_requirements_and_a_version():
    f1, f2, f3 = (load_prompt(PROMPT_NAMES[k]) for k in ("F1", "F2", "F3"))
    assert f1.placeholders == {"seed_question1", "seed_question2"}
    assert f2.placeholders == {"seed_question1", "seed_question2", "rare_disease", "medical_knowledge"}
    assert "(d) Include realistic multiple-choice options that are plausible but only one is correct" in f1.template
    assert "(b) Incorporate the MEDICAL KNOWLEDGE about rare disease if it is useful" in f2.template
    assert "(e) Include realistic multiple-choice options" in f2.template
    assert "<Reasoning> - for analysis questions" in f3.template
    assert all(p.version == "1" and len(p.hash) == 16 for p in (f1, f2, f3))
    assert not f1.template.startswith("#")


def test_prompt_rendering_leaves_braces_in_values_alone(tmp_path):
    (tmp_path / "t.txt").write_text("# version: 2\nA {x} and {y}.\n")
    p = load_prompt("t", tmp_path)
    assert p.render(x="{y}", y="set {z}") == "A {y} and set {z}."
    with pytest.raises(PromptError, match="missing"):
        p.render(x="1")
    (tmp_path / "bad.txt").write_text("no header\n")
    with pytest.raises(PromptError, match="version"):
        load_prompt("bad", tmp_path)
    with pytest.raises(PromptError, match="not found"):
        load_prompt("absent", tmp_path)


class _P:
    def __init__(self, i: int, title: str, text: str):
        self.id, self.title, self.text = f"doc-{i}", title, text


def test_f2_request_carries_seeds_disease_and_retrieved_passages(seeds, orphanet_names):
    prompts = {k: load_prompt(PROMPT_NAMES[k]) for k in ("F1", "F2")}
    asked = []

    def retriever(query: str, k: int):
        asked.append((query, k))
        return [_P(i, query, f"Passage {i} about {query}. " * 5) for i in range(6)]

    a = next(x for x in plan(0, 100, 0, 0.5, len(seeds), orphanet_names) if x.kind == "F2")
    req, retrieved = build_request(a, seeds, prompts, retriever, 4, True)
    assert isinstance(req, LLMRequest) and req.json_schema == QUESTION_SCHEMA and req.nonce == f"synth-attempt-{a.index}"
    text = req.messages[0][1]
    assert asked == [(a.rare_disease, 4)] and retrieved == [f"doc-{i}" for i in range(4)]
    assert f"The following medical knowledge about {a.rare_disease} can be used:" in text
    assert seeds[a.seed_indices[0]].render() in text and seeds[a.seed_indices[1]].render() in text
    assert "[4] " in text and "[5] " not in text and "{" + "medical_knowledge}" not in text
    again, _ = build_request(a, seeds, prompts, retriever, 4, True)
    assert again == req  # same attempt, same request: a cache hit on rerun


def test_f1_request_has_no_knowledge_and_no_retrieval(seeds):
    prompts = {k: load_prompt(PROMPT_NAMES[k]) for k in ("F1", "F2")}
    a = plan_attempt(0, 0, 0.0, len(seeds), [])
    req, retrieved = build_request(a, seeds, prompts, None, 4, structured=False, assistant_prefix='{"question": "')
    assert retrieved == [] and req.json_schema is None and req.assistant_prefix == '{"question": "'
    assert "MEDICAL KNOWLEDGE CONTEXT" not in req.messages[0][1]


def test_format_knowledge_cuts_long_passages():
    block = format_knowledge([_P(0, "T", "word " * 1000)])
    assert block.startswith("[1] T\n") and block.endswith(" ...") and len(block) < 1600
    assert "no passages" in format_knowledge([])


def test_synth_params_logged_to_mlflow_have_no_url_credentials():
    from medssr.config import GeneratorCfg, Params, SynthCfg

    params = Params(synth=SynthCfg(generator=GeneratorCfg(backend="openai_compatible", base_url="http://u:sk-canary@10.0.0.1:8000/v1")))
    section = synth_section(params)
    assert section["synth.generator.base_url"] == "http://10.0.0.1:8000/v1"
    assert "sk-canary" not in repr(section) and section["synth.rare_ratio"] == 0.25


def test_small_model_prompt_shows_seeds_in_the_reply_layout_and_prefills_it(seeds, orphanet_names):
    from medssr.synth.run import render_seed, synth_prompts

    prompts = synth_prompts("small")
    assert prompts["F1"].meta["seed_format"] == "text_answer" and prompts["F1"].meta["assistant_prefix"] == "Question:"
    a = next(x for x in plan(0, 50, 0, 0.5, len(seeds), orphanet_names) if x.kind == "F2")
    req, _ = build_request(a, seeds, prompts, lambda q, k: [_P(i, q, "long text " * 200) for i in range(k)], 2, False)
    s1 = seeds[a.seed_indices[0]]
    assert "Question: " + s1.render() + f"\nAnswer: {s1.answer}" in req.messages[0][1]
    assert req.assistant_prefix == "Question:"
    passage_lines = [line for line in req.messages[0][1].split("\n") if line.startswith("long text")]
    assert len(passage_lines) == 2 and all(len(line) <= 604 for line in passage_lines)  # cut at max_passage_chars=600
    assert build_request(a, seeds, prompts, lambda q, k: [], 2, False, assistant_prefix="{")[0].assistant_prefix == "{"
    assert "(c) Ensure all medical content is factually correct" in prompts["F2"].template
    assert json.loads(render_seed(s1, "json")) == {"question": s1.question, "options": s1.options, "answer": s1.answer}


@pytest.mark.parametrize("variant", ["", "small", "small_json"])
def test_every_synthesis_prompt_variant_keeps_the_paper_requirements(variant):
    from medssr.synth.run import synth_prompts

    p = synth_prompts(variant)
    assert p["F1"].placeholders == {"seed_question1", "seed_question2"}
    assert p["F2"].placeholders == {"seed_question1", "seed_question2", "rare_disease", "medical_knowledge"}
    assert "(a) Using the seed question as inspiration, generate a novel and clinically accurate question of comparable difficulty." in p["F1"].template
    assert "(e) Include realistic multiple-choice options that are plausible but only one is correct" in p["F2"].template
    assert p["F1"].meta.get("seed_format", "text") in ("text", "text_answer", "json")


# -- a target measured rare share (#22.5) and Eq. 2's E_rare in the paper profiles (#22.6) ---------------------
def test_target_zero_plans_f1_only_and_a_full_rare_quota_stops_f2():
    assert steer_alpha(0, 10, {}) == 0.0  # target 0: no rare question wanted, never knowledge injection
    assert steer_alpha(0, 3, {"F1": (50, 10), "F2": (50, 45)}) == 0.0
    assert steer_alpha(4, 0, {}) == 1.0  # only rare questions still missing


def test_steered_alpha_solves_for_the_share_still_needed_from_the_rates_seen():
    # F.1 questions are tagged at 10 %, F.2 at 90 % (after many questions the priors hardly count): 50 % needs α ≈ 0.5
    assert steer_alpha(50, 50, {"F1": (10_000, 1_000), "F2": (10_000, 9_000)}) == pytest.approx(0.5, abs=0.01)
    # before any question: the priors (13 % natural share, §4.3); asking for about that share needs no injection
    assert steer_alpha(13, 87, {}) == 0.0 and steer_alpha(25, 75, {}) == pytest.approx((0.25 - 0.13) / (0.9 - 0.13), abs=1e-4)
    assert PRIOR_TAGGED["F1"] == 0.13
    # F.2 questions tagged no more often than F.1 ones: injecting knowledge would only cost retrieval
    assert steer_alpha(50, 50, {"F1": (100, 30), "F2": (100, 20)}) == 0.0


def test_share_quotas_round_the_target_over_n():
    assert share_quotas(20, 0.5) == (10, 10) and share_quotas(43000, 0.25) == (10750, 32250) and share_quotas(7, 0.0) == (0, 7)
    with pytest.raises(ValueError, match="rare_share_target"):
        share_quotas(10, 1.5)


@pytest.mark.parametrize("profile", ["paper-qwen3-8b", "paper-llama3.1-8b"])
def test_paper_profiles_draw_from_all_of_e_rare_and_target_the_measured_25_percent(profile, tmp_path):
    from medssr.config import load_params
    from medssr.profiles import apply_profile
    from tests.conftest import ROOT

    target = tmp_path / "params.yaml"
    target.write_text((ROOT / "params.yaml").read_text())
    apply_profile(profile, params_path=target)
    synth = load_params(target).synth
    assert synth.prefer_covered is False  # Eq. 2: e from E_rare, covered by the corpus or not
    assert synth.rare_share_target == 0.25  # §4.2: 25 % rare-disease content, measured
    default = load_params(ROOT / "params.yaml").synth
    assert default.prefer_covered is True and default.rare_share_target is None  # the embedded default keeps fixed α
