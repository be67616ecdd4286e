"""medssr.rollout: k samples per question, resumable, on the tiny random Llama with the real hf sampler."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from medssr.config import SamplingCfg
from medssr.records import append_jsonl, quarantine_path_for
from medssr.rollout import (
    Item,
    RolloutSpec,
    RolloutStats,
    cache_path_for,
    chunk_size_for,
    is_complete,
    progress_path_for,
    progress_row,
    prompt_hash,
    rollout,
)
from medssr.sampling import Completion

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OPTIONS = {"A": "yes", "B": "no"}


class Stop(Exception):
    """Raised from inside a run, as a kill would cut it, once some questions are saved."""


def composition_sensitive(sampler, seed: int = 0) -> None:
    """Make the batch composition visibly move every sample: each forward adds (rows in the batch) x a fixed random
    vector to the logits. Real hf runs differ only by float rounding, which a tiny model rarely turns into another
    token; this makes any change of company a different output, so a resume that changes it fails the test."""
    import torch

    real = sampler._forward
    bias = torch.randn(sampler.model.config.vocab_size, generator=torch.Generator().manual_seed(seed))

    def forward(input_ids, attention_mask, position_ids, cache):
        return real(input_ids, attention_mask, position_ids, cache) + input_ids.shape[0] * bias

    sampler._forward = forward


def stop_after(sampler, n: int) -> None:
    """The sampler raises ``Stop`` right after its n-th finished question has been reported (and so saved)."""
    real = sampler.sample
    seen = [0]

    def sample(prompts, *a, on_prompt_done=None, **kw):
        def done(i, comps):
            on_prompt_done(i, comps)
            seen[0] += 1
            if seen[0] == n:
                raise Stop

        return real(prompts, *a, on_prompt_done=done, **kw)

    sampler.sample = sample


def recording(sampler) -> list[list[str]]:
    """The keys of every ``sample`` call (the sampler itself runs unchanged)."""
    calls: list[list[str]] = []
    real = sampler.sample

    def sample(prompts, *a, keys=None, **kw):
        calls.append(list(keys))
        return real(prompts, *a, keys=keys, **kw)

    sampler.sample = sample
    return calls


def hf_sampler(model_dir: Path, batch_size: int = 4):
    from medssr.sampling import HFSampler

    s = HFSampler(str(model_dir), batch_size=batch_size, seed=0)
    composition_sensitive(s)
    return s


def items(n: int) -> list[Item]:
    return [Item(f"q{i}", f"Question {i}: is {i} even?\nA. yes\nB. no", OPTIONS) for i in range(n)]


def spec(backend: str = "hf", chunk: int | None = 2, k: int = 2, **sampling) -> RolloutSpec:
    s = SamplingCfg(backend=backend, n=k, temperature=1.0, max_new_tokens=5, batch_size=4, **{"dtype": "float32", **sampling})
    return RolloutSpec(s, k, seed=0, weights="w", template="t", chunk=chunk)


# --- resume ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("chunk", "groups"), [(2, None), (None, [2, 3])], ids=["chunks-of-one-batch", "one-call-per-group"])
def test_a_run_stopped_mid_chunk_resumes_to_exactly_the_uninterrupted_samples(tiny_model_dir, tmp_path, chunk, groups):
    """hf: the unfinished chunk (or group) is sampled again whole, in the company it had; its saved questions are kept."""
    sp, qs = spec(chunk=chunk), items(5)
    ref, _ = rollout(hf_sampler(tiny_model_dir), sp, qs, tmp_path / "ref.jsonl", groups=groups, progress=False)

    stopped = hf_sampler(tiny_model_dir)
    stop_after(stopped, 3)
    with pytest.raises(Stop):
        rollout(stopped, sp, qs, tmp_path / "run.jsonl", groups=groups, progress=False)
    assert len((tmp_path / "run.jsonl").read_text().splitlines()) == 3

    again = hf_sampler(tiny_model_dir)
    calls = recording(again)
    done, stats = rollout(again, sp, qs, tmp_path / "run.jsonl", groups=groups, progress=False)
    assert done == ref
    assert calls == ([["q2", "q3"], ["q4"]] if chunk == 2 else [["q2", "q3", "q4"]])
    assert (stats.resumed, stats.sampled, stats.samples) == (2, 3, 6)
    assert len((tmp_path / "run.jsonl").read_text().splitlines()) == 5  # a re-sampled saved question is not appended twice


def two_hf_engines(model_dir: Path):
    from medssr.sampling import make_sampler

    s = make_sampler(str(model_dir), batch_size=4, seed=0, sampling=SamplingCfg(engines=2, dtype="float32"))
    for engine in s.shards:
        composition_sensitive(engine)
    return s


@pytest.mark.parametrize(("chunk", "groups"), [(2, None), (None, [2, 3])], ids=["chunks-of-one-batch", "one-call-per-group"])
def test_hf_engines_take_whole_chunks_and_give_one_engines_samples(tiny_model_dir, chunk, groups):
    """Each chunk (or group) runs whole on the next free engine: the same company, so the same samples as one engine."""
    qs = items(5)
    ref, _ = rollout(hf_sampler(tiny_model_dir), spec(chunk=chunk), qs, None, groups=groups, progress=False)
    two = two_hf_engines(tiny_model_dir)
    calls = [recording(engine) for engine in two.shards]
    torch.set_num_threads(2)  # one each (with one thread in all, the engines would take turns)
    try:
        done, stats = rollout(two, spec(chunk=chunk, engines=2), qs, None, groups=groups, progress=False)
    finally:
        torch.set_num_threads(1)
    assert done == ref and (stats.sampled, stats.samples) == (5, 10)
    whole = [["q0", "q1"], ["q2", "q3"], ["q4"]] if chunk == 2 else [["q0", "q1"], ["q2", "q3", "q4"]]
    assert sorted(c for cs in calls for c in cs) == whole
    assert all(calls)  # both engines worked


def test_a_run_stopped_on_one_engine_resumes_on_two_to_the_uninterrupted_samples(tiny_model_dir, tmp_path):
    qs = items(5)
    ref, _ = rollout(hf_sampler(tiny_model_dir), spec(chunk=2), qs, None, progress=False)
    stopped = hf_sampler(tiny_model_dir)
    stop_after(stopped, 3)
    with pytest.raises(Stop):
        rollout(stopped, spec(chunk=2), qs, tmp_path / "run.jsonl", progress=False)
    done, stats = rollout(two_hf_engines(tiny_model_dir), spec(chunk=2, engines=2), qs, tmp_path / "run.jsonl", progress=False)
    assert done == ref and stats.resumed == 2


def test_the_composition_double_makes_a_question_sampled_alone_differ(tiny_model_dir, tmp_path):
    """Why the resume test can fail: sampling only the missing question of a chunk would give other samples."""
    sp, qs = spec(chunk=2), items(2)
    together, _ = rollout(hf_sampler(tiny_model_dir), sp, qs, None, progress=False)
    alone, _ = rollout(hf_sampler(tiny_model_dir), sp, qs[1:], None, progress=False)
    assert together["q1"] != alone["q1"]


def test_with_samples_fixed_by_their_seeds_only_the_missing_questions_are_sampled(tiny_model_dir, tmp_path):
    """vLLM's rule: nothing finished is sampled again, whatever chunk it was in."""
    from medssr.sampling import HFSampler

    sp, qs = spec("vllm", chunk=4), items(5)
    prog = tmp_path / "p.jsonl"
    first = HFSampler(str(tiny_model_dir), batch_size=4)
    stop_after(first, 3)
    with pytest.raises(Stop):
        rollout(first, sp, qs, prog, progress=False)
    saved = [json.loads(x)["key"] for x in prog.read_text().splitlines()]
    again = HFSampler(str(tiny_model_dir), batch_size=4)
    calls = recording(again)
    done, stats = rollout(again, sp, qs, prog, progress=False)
    assert sorted(done) == [q.key for q in qs]
    assert sorted(k for c in calls for k in c) == sorted(set(done) - set(saved))
    assert (stats.resumed, stats.sampled) == (3, 2)


def test_groups_never_share_a_sampler_call_and_chunks_are_cut_within_each(tiny_model_dir):
    from medssr.sampling import HFSampler

    s = HFSampler(str(tiny_model_dir), batch_size=4)
    calls = recording(s)
    rollout(s, spec(chunk=2), items(5), None, groups=[3, 2], progress=False)
    assert calls == [["q0", "q1"], ["q2"], ["q3", "q4"]]
    with pytest.raises(ValueError, match="groups cover 4 questions, expected 5"):
        rollout(s, spec(chunk=2), items(5), None, groups=[3, 1], progress=False)


def test_a_sampler_that_reports_no_question_as_it_finishes_still_saves_every_question(tiny_model_dir, tmp_path):
    from medssr.sampling import HFSampler

    s = HFSampler(str(tiny_model_dir), batch_size=4)
    real = s.sample
    s.sample = lambda prompts, *a, on_prompt_done=None, **kw: real(prompts, *a, **kw)
    done, stats = rollout(s, spec(chunk=2), items(3), tmp_path / "p.jsonl", progress=False)
    assert len(done) == 3 and stats.sampled == 3 and stats.samples == 6
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 3


# --- progress rows ---------------------------------------------------------------------------------------------


def _saved(tmp_path: Path, rows: list[dict]) -> Path:
    prog = tmp_path / "p.jsonl"
    for r in rows:
        append_jsonl(prog, r)
    return prog


def test_a_saved_row_is_reused_with_its_raw_outputs(tiny_model_dir, tmp_path):
    from medssr.sampling import HFSampler

    sp, (q,) = spec(chunk=1), items(1)
    comps = [Completion("The answer is A.", 5, "answer"), Completion("Well", 5, "length")]
    prog = _saved(tmp_path, [progress_row(sp.fingerprint(), q, comps)])
    s = HFSampler(str(tiny_model_dir), batch_size=4)
    calls = recording(s)
    done, stats = rollout(s, sp, [q], prog, progress=False)
    assert done == {"q0": comps} and calls == [] and (stats.resumed, stats.sampled) == (1, 0)


@pytest.mark.parametrize("stale", ["another-fingerprint", "another-prompt", "another-k", "label-format-before-rollout",
                                   "eval-format-before-rollout", "n-tokens-not-a-number"])
def test_rows_that_do_not_match_this_spec_and_prompt_are_sampled_again(tiny_model_dir, tmp_path, stale):
    """Progress files from before medssr.rollout (per-stage formats and fingerprints) are never misread."""
    from medssr.sampling import HFSampler

    sp, (q,) = spec(chunk=1), items(1)
    row = progress_row(sp.fingerprint(), q, [Completion("The answer is A.", 5, "answer")] * 2)
    row = {"another-fingerprint": {**row, "fp": spec(chunk=1, top_k=5).fingerprint()},
           "another-prompt": {**row, "prompt": prompt_hash(q.prompt + " ")},
           "another-k": {**row, "outputs": row["outputs"][:1]},
           "label-format-before-rollout": {"key": "q0", "fp": row["fp"], "prompt": row["prompt"], "votes": ["A", "A"],
                                           "n_tokens": [5, 5], "finish": ["answer", "answer"]},
           "eval-format-before-rollout": {"key": "q0", "outputs": row["outputs"]},
           "n-tokens-not-a-number": {**row, "outputs": [["The answer is A.", "5", "answer"]] * 2}}[stale]
    prog = _saved(tmp_path, [row])
    done, stats = rollout(HFSampler(str(tiny_model_dir), batch_size=4), sp, [q], prog, progress=False)
    assert (stats.resumed, stats.sampled) == (0, 1)
    assert done["q0"] != [Completion("The answer is A.", 5, "answer")] * 2


def test_is_complete_wants_k_outputs_of_text_token_count_and_finish_reason():
    ok = {"key": "q", "outputs": [["t", 3, "eos"], ["u", 4, "length"]]}
    assert is_complete(ok, 2)
    assert not is_complete(ok, 3)
    assert not is_complete({**ok, "key": 7}, 2)
    assert not is_complete({"key": "q", "outputs": [["t", 3], ["u", 4, "eos"]]}, 2)
    assert not is_complete({"key": "q", "outputs": [[None, 3, "eos"], ["u", 4, "eos"]]}, 2)


def test_a_damaged_progress_line_is_quarantined_counted_and_its_question_sampled_again(tiny_model_dir, tmp_path):
    from medssr.sampling import HFSampler

    sp, qs = spec("vllm", chunk=4), items(3)
    prog = tmp_path / "p.jsonl"
    ref, _ = rollout(HFSampler(str(tiny_model_dir), batch_size=4), sp, qs, prog, progress=False)
    lines = prog.read_text().splitlines(keepends=True)
    prog.write_text(lines[0] + lines[1][:20] + "\n" + lines[2])
    done, stats = rollout(HFSampler(str(tiny_model_dir), batch_size=4), sp, qs, prog, progress=False)
    assert done == ref
    assert (stats.quarantined, stats.resumed, stats.sampled) == (1, 2, 1)
    assert stats.quarantine_files == [str(quarantine_path_for(prog))]


def test_stats_add_sums_counts_and_keeps_each_quarantine_file_once():
    a = RolloutStats(resumed=1, sampled=2, samples=4, tokens=9, seconds=1.5, quarantined=1, quarantine_files=["x"])
    a.add(RolloutStats(resumed=3, sampled=1, samples=2, tokens=1, seconds=0.5, torn_tail=1, quarantine_files=["x", "y"]))
    assert a == RolloutStats(resumed=4, sampled=3, samples=6, tokens=10, seconds=2.0, quarantined=1, torn_tail=1,
                             quarantine_files=["x", "y"])


def test_progress_homes_beside_an_output_or_in_a_cache_named_by_the_fingerprint(tmp_path):
    assert progress_path_for(tmp_path / "labeled" / "synthetic.jsonl") == tmp_path / "labeled" / ".synthetic.progress.jsonl"
    sp = spec()
    assert cache_path_for(tmp_path, "base", sp) == tmp_path / f"base-{sp.fingerprint()}.jsonl"


# --- fingerprint and chunks ------------------------------------------------------------------------------------


def test_hf_chunk_is_what_one_batch_holds_and_its_fingerprint_ignores_the_engine_count():
    """A kill loses at most ceil(batch_size / G) questions per engine (default 32 / 8 = 4), and each chunk runs whole
    on one engine, so resuming on fewer engines reuses the samples."""
    paper = SamplingCfg(n=8, batch_size=32)
    assert chunk_size_for(paper, 8) == 4 and chunk_size_for(SamplingCfg(batch_size=30), 8) == 4
    assert chunk_size_for(dataclasses.replace(paper, engines=3), 8) == 4
    fps = {RolloutSpec(dataclasses.replace(paper, engines=e), 8, 0, chunk=chunk_size_for(dataclasses.replace(paper, engines=e), 8))
           .fingerprint() for e in (1, 2, 4)}
    assert len(fps) == 1 and RolloutSpec(paper, 8, 0, chunk=5).fingerprint() not in fps


def test_a_whole_group_per_call_is_the_same_composition_on_any_number_of_hf_engines():
    one = SamplingCfg(batch_size=32)
    assert RolloutSpec(one, 1, 0).fingerprint() == RolloutSpec(dataclasses.replace(one, engines=2), 1, 0).fingerprint()
    assert RolloutSpec(one, 1, 0).fingerprint() != RolloutSpec(dataclasses.replace(one, batch_size=16), 1, 0).fingerprint()


def test_vllm_chunk_is_two_batches_of_sequences_and_its_fingerprint_ignores_batching():
    v = SamplingCfg(backend="vllm", batch_size=256)
    assert chunk_size_for(v, 8) == 64 and chunk_size_for(v, 1) == 512 and chunk_size_for(SamplingCfg(backend="vllm", batch_size=8), 8) == 32
    base = RolloutSpec(v, 8, 0, chunk=64).fingerprint()
    for scaled in (dataclasses.replace(v, batch_size=64, engines=2, tensor_parallel_size=2, gpu_memory_utilization=0.5),):
        assert RolloutSpec(scaled, 8, 0, chunk=chunk_size_for(scaled, 8)).fingerprint() == base
    assert RolloutSpec(v, 8, 0, chunk=None).fingerprint() == base


@pytest.mark.parametrize("change", ["weights", "dtype", "model_dtype", "template", "chat_template", "k", "seed", "temperature",
                                    "top_p", "top_k", "max_new_tokens", "stop_at_answer", "backend", "hf_batch_size"])
def test_fingerprint_changes_with_everything_that_decides_a_sample(change):
    s = SamplingCfg(batch_size=32, dtype="float32")
    base = RolloutSpec(s, 4, 0, weights="w", dtype="float32", template="t", chat_template=True, chunk=8)
    changed = {"weights": dataclasses.replace(base, weights="w2"),
               "dtype": dataclasses.replace(base, sampling=dataclasses.replace(s, dtype="bfloat16")),
               "model_dtype": dataclasses.replace(base, dtype="bfloat16"),  # conservative: it does not move the samples
               "template": dataclasses.replace(base, template="t2"), "chat_template": dataclasses.replace(base, chat_template=False),
               "k": dataclasses.replace(base, k=5), "seed": dataclasses.replace(base, seed=1),
               **{f: dataclasses.replace(base, sampling=dataclasses.replace(s, **{f: v}))
                  for f, v in (("temperature", 0.5), ("top_p", 0.9), ("top_k", 20), ("max_new_tokens", 64),
                               ("stop_at_answer", False), ("backend", "vllm"))},
               "hf_batch_size": dataclasses.replace(base, sampling=dataclasses.replace(s, batch_size=16))}[change]
    assert changed.fingerprint() != base.fingerprint()


# --- the sampling dtype ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bf16_fast", [True, False], ids=["amx", "no-amx"])
def test_auto_dtype_enters_the_fingerprint_as_this_machine_resolves_it(monkeypatch, bf16_fast):
    """A progress file is keyed by the dtype its samples were computed in, not by the word 'auto'."""
    import medssr.sampling

    monkeypatch.setattr(medssr.sampling, "cpu_bf16_is_fast", lambda: bf16_fast)
    s = SamplingCfg(batch_size=32)
    auto = RolloutSpec(s, 4, 0, weights="w", dtype="float32", chunk=8)
    explicit = dataclasses.replace(auto, sampling=dataclasses.replace(s, dtype="bfloat16" if bf16_fast else "float32"))
    assert auto.sampling_dtype == ("bfloat16" if bf16_fast else "float32")
    assert auto.fingerprint() == explicit.fingerprint()


def test_a_float32_progress_file_is_not_resumed_into_a_bfloat16_run(tiny_model_dir, tmp_path, monkeypatch):
    import medssr.sampling

    qs, prog = items(3), tmp_path / "p.jsonl"
    monkeypatch.setattr(medssr.sampling, "cpu_bf16_is_fast", lambda: False)
    _, first = rollout(hf_sampler(tiny_model_dir), spec(chunk=2, dtype="auto"), qs, prog, progress=False)
    monkeypatch.setattr(medssr.sampling, "cpu_bf16_is_fast", lambda: True)  # the same params on an AMX machine
    _, again = rollout(hf_sampler(tiny_model_dir), spec(chunk=2, dtype="auto"), qs, prog, progress=False)
    assert (first.sampled, again.resumed, again.sampled) == (3, 0, 3)


def test_float32_fingerprints_are_those_from_before_sampling_dtype_existed():
    """Progress files and eval caches written before sampling.dtype (model.dtype float32) are still resumed."""
    spec32 = RolloutSpec(SamplingCfg(batch_size=32, dtype="float32"), 4, 0, weights="w", dtype="float32", template="t", chunk=8)
    assert spec32.fingerprint() == "fe1861bc266c1a12"  # RolloutSpec(SamplingCfg(batch_size=32), ...) at c6c517c
