"""The sampler shared by voting and evaluation: a tiny random Llama with SmolLM2's real tokenizer stands in for the policy."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from medssr.config import SamplingCfg
from medssr.sampling import (
    Completion,
    HFSampler,
    ShardedSampler,
    find_stop,
    is_oom,
    make_sampler,
    resolve_max_model_len,
    row_seed,
    sample_tokens,
)

PROMPTS = ["What is the most common cause of community-acquired pneumonia?", "Hi", "Name one symptom of anemia, briefly."]
OPTIONS = {"A": "Streptococcus pneumoniae", "B": "Haemophilus influenzae", "C": "Mycoplasma", "D": "Legionella"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sampler(tiny_model_dir) -> HFSampler:
    return HFSampler(str(tiny_model_dir), batch_size=4, seed=0)


def _texts(results: list[list[Completion]]) -> list[list[str]]:
    return [[c.text for c in comps] for comps in results]


# --- pure pieces -----------------------------------------------------------------------------------------------


def test_sample_tokens_at_temperature_zero_is_argmax():
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, 0.0]])
    assert sample_tokens(logits, torch.tensor([0.99, 0.01]), 0.0).tolist() == [1, 0]


def test_sample_tokens_follows_the_softmax_distribution():
    logits = torch.log(torch.tensor([[0.25, 0.75]])).expand(1000, -1)
    u = (torch.arange(1000) + 0.5) / 1000  # evenly spread uniforms: counts equal the probabilities
    picks = sample_tokens(logits, u, 1.0)
    assert int((picks == 1).sum()) == 750


def test_sample_tokens_top_k_and_top_p_cut_the_tail():
    logits = torch.log(torch.tensor([[0.1, 0.6, 0.3]])).expand(100, -1)
    u = (torch.arange(100) + 0.5) / 100
    assert set(sample_tokens(logits, u, 1.0, top_k=1).tolist()) == {1}
    assert set(sample_tokens(logits, u, 1.0, top_k=2).tolist()) == {1, 2}
    assert set(sample_tokens(logits, u, 1.0, top_p=0.5).tolist()) == {1}
    assert set(sample_tokens(logits, u, 1.0, top_p=0.8).tolist()) == {1, 2}


def test_row_seed_depends_on_seed_key_and_index_only():
    assert row_seed(0, "q1", 3) == row_seed(0, "q1", 3)
    assert len({row_seed(0, "q1", 0), row_seed(0, "q1", 1), row_seed(0, "q2", 0), row_seed(1, "q1", 0)}) == 4


def test_find_stop_returns_the_earliest_stop_string():
    assert find_stop("abc END xyz STOP", ["STOP", "END"]) == 4
    assert find_stop("nothing here", ["STOP"]) == -1


def test_oom_detection_covers_torch_and_allocator_messages():
    assert is_oom(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: Unable to allocate 123 bytes"))
    assert is_oom(torch.OutOfMemoryError("out of memory"))
    assert not is_oom(RuntimeError("shape mismatch"))


# --- hf backend on the tiny model ----------------------------------------------------------------------------


def test_sample_returns_n_completions_per_prompt_in_order(sampler):
    res = sampler.sample(PROMPTS, n=3, temperature=1.0, max_new_tokens=12, progress=False)
    assert [len(c) for c in res] == [3, 3, 3]
    for comps in res:
        for c in comps:
            assert isinstance(c.text, str)
            assert 1 <= c.n_tokens <= 12
            assert c.finish_reason in ("eos", "length")
    assert sampler.last_stats.sequences == 9
    assert sampler.last_stats.tokens == sum(c.n_tokens for comps in res for c in comps)


def test_same_seed_gives_same_completions_and_another_seed_differs(sampler):
    a = sampler.sample(PROMPTS, n=2, temperature=1.0, max_new_tokens=10, seed=7, progress=False)
    b = sampler.sample(PROMPTS, n=2, temperature=1.0, max_new_tokens=10, seed=7, progress=False)
    c = sampler.sample(PROMPTS, n=2, temperature=1.0, max_new_tokens=10, seed=8, progress=False)
    assert _texts(a) == _texts(b)
    assert _texts(a) != _texts(c)


def test_samples_of_a_prompt_do_not_depend_on_the_other_prompts_in_the_call(sampler):
    alone = sampler.sample([PROMPTS[1]], n=3, temperature=1.0, max_new_tokens=10, keys=["q-hi"], progress=False)
    mixed = sampler.sample([PROMPTS[0], PROMPTS[1], PROMPTS[2]], n=3, temperature=1.0, max_new_tokens=10,
                           keys=["q-pneumonia", "q-hi", "q-anemia"], progress=False)
    assert _texts(alone)[0] == _texts(mixed)[1]


def test_greedy_continuous_batching_matches_model_generate_one_prompt_at_a_time(sampler):
    # batch_size 4 < 3 prompts x 2 samples, prompts of different lengths: rows leave, new rows join mid-way
    res = sampler.sample(PROMPTS, n=2, temperature=0.0, max_new_tokens=16, progress=False)
    assert sampler.last_stats.rebuilds >= 2
    for p, comps in zip(PROMPTS, res, strict=True):
        ids = sampler.tok(sampler.render(p), add_special_tokens=False, return_tensors="pt")
        with torch.inference_mode():
            out = sampler.model.generate(**ids, max_new_tokens=16, do_sample=False)
        ref = sampler.tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        assert [c.text for c in comps] == [ref, ref]


def test_stop_string_ends_the_row_and_is_cut_from_the_text(sampler):
    free = sampler.sample([PROMPTS[0]], n=1, temperature=1.0, max_new_tokens=24, seed=3, progress=False)[0][0]
    assert len(free.text) > 12
    stop = free.text[6:10]
    stopped = sampler.sample([PROMPTS[0]], n=1, temperature=1.0, max_new_tokens=24, seed=3, stop=[stop], progress=False)[0][0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[: free.text.find(stop)]
    assert stopped.n_tokens < free.n_tokens


def _forcing(sampler: HFSampler, script: list[int], start: int, batch_log: list[int]):
    """Wrap the real forward with a logit bias that writes `script` for rows whose next position is `start` + t.

    It plays the model saying '... The answer is C. ...' (a random model never would) while the real model,
    KV cache and batching run underneath.
    """
    real = sampler._forward

    def forward(input_ids, attention_mask, position_ids, cache):
        logits = real(input_ids, attention_mask, position_ids, cache)
        batch_log.append(input_ids.shape[0])
        nxt = position_ids[:, -1] + 1 - start
        for r in range(logits.shape[0]):
            t = int(nxt[r])
            if 0 <= t < len(script):
                logits[r] = -1e4
                logits[r, script[t]] = 1e4
        return logits

    return forward


def test_stop_at_answer_ends_each_row_right_after_the_committed_answer(sampler, monkeypatch):
    short, long = "Q?", "Please answer this question in great detail. " * 8
    script = sampler.tok.encode("Let us see. The answer is C. Then more words follow after it", add_special_tokens=False)
    upto = len(sampler.tok.encode("Let us see. The answer is C.", add_special_tokens=False))
    start = len(sampler.tok(sampler.render(short), add_special_tokens=False)["input_ids"])
    assert len(sampler.tok(sampler.render(long), add_special_tokens=False)["input_ids"]) > start + 40  # never forced
    batches: list[int] = []
    monkeypatch.setattr(sampler, "_forward", _forcing(sampler, script, start, batches))
    res = sampler.sample([short, long], n=2, temperature=1.0, max_new_tokens=40, options=[OPTIONS, OPTIONS], progress=False)
    for c in res[0]:
        assert (c.text, c.n_tokens, c.finish_reason) == ("Let us see. The answer is C.", upto, "answer")
    for c in res[1]:
        assert c.finish_reason != "answer" and c.n_tokens > upto
    # after the answered rows left, the decode batch holds only the two long-prompt rows: no compute spent on them
    assert batches[-1] == 2 and max(batches) == 4
    off = sampler.sample([short], n=2, temperature=1.0, max_new_tokens=40, options=[OPTIONS], stop_at_answer=False, progress=False)
    for c in off[0]:
        assert c.text.startswith("Let us see. The answer is C. Then more words") and c.n_tokens > upto


def test_out_of_memory_halves_the_batch_and_gives_the_same_samples(sampler, monkeypatch):
    ref = sampler.sample(PROMPTS, n=2, temperature=1.0, max_new_tokens=10, progress=False)
    real = sampler._forward
    seen: list[int] = []

    def small_memory(input_ids, attention_mask, position_ids, cache):
        seen.append(input_ids.shape[0])
        if input_ids.shape[0] > 2:
            raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 1 GB. Buy new RAM! (out of memory)")
        return real(input_ids, attention_mask, position_ids, cache)

    monkeypatch.setattr(sampler, "_forward", small_memory)
    got = sampler.sample(PROMPTS, n=2, temperature=1.0, max_new_tokens=10, progress=False)
    assert sampler.last_stats.oom_halvings >= 1
    assert 4 in seen and max(seen[seen.index(4) + 1 :]) <= 2
    assert _texts(got) == _texts(ref)  # evicted rows restarted from their own seeds


def test_errors_other_than_out_of_memory_propagate(sampler, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("shape mismatch in layer 3")

    monkeypatch.setattr(sampler, "_forward", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        sampler.sample(PROMPTS[:1], n=2, temperature=1.0, max_new_tokens=4, progress=False)


def test_sampler_works_with_a_tokenizer_whose_chat_template_was_removed(tiny_model_dir, tmp_path):
    d = tmp_path / "notemplate"
    shutil.copytree(tiny_model_dir, d)
    (d / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    s = HFSampler(str(d), batch_size=2)
    assert s.render("Hi") == "<|user|>\nHi\n<|assistant|>\n"  # medssr.models.FALLBACK_CHAT_TEMPLATE
    res = s.sample(["Hi"], n=2, temperature=1.0, max_new_tokens=5, progress=False)
    assert [c.n_tokens > 0 for c in res[0]] == [True, True]


def test_constrained_choice_returns_an_option_letter_deterministically(sampler):
    base = [sampler.render(p) + "Some reasoning.\n" + "The answer is" for p in PROMPTS]
    letters = [["A", "B", "C", "D"], ["A", "B"], ["A", "B", "C", "D", "E"]]
    first = sampler.constrained_choice(base, letters)
    assert [x in ls for x, ls in zip(first, letters, strict=True)] == [True, True, True]
    assert sampler.constrained_choice(base, letters) == first
    assert sampler.constrained_choice(base[:1], letters[:1]) == first[:1]  # padding in a batch does not change it
    if first[0] in ("A", "B"):  # restricting the choice to a subset that holds the winner keeps the winner
        assert sampler.constrained_choice(base[:1], [["A", "B"]]) == first[:1]



@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_second_pass_score_does_not_depend_on_the_other_texts(tiny_model_dir, dtype):
    """The evaluated answer of one question must not change when other questions join the evaluation: each text's
    letter logits are bitwise the same alone and among longer and shorter texts (padding moved bf16 rounding)."""
    s = HFSampler(str(tiny_model_dir), dtype=dtype, batch_size=4, seed=0)
    texts = [s.render(p) + "Some reasoning that goes on for a while, " * k + "\nThe answer is" for k, p in zip((1, 9, 0), PROMPTS, strict=True)]
    letters = [list("ABCD")] * 3
    alone = [s.letter_scores([t], [ls])[0] for t, ls in zip(texts, letters, strict=True)]
    assert s.letter_scores(texts, letters) == alone
    assert s.letter_scores(texts[::-1], letters) == alone[::-1]


# --- the fast path: our decode step over a shared-prefix KV cache (Llama family on CPU) -------------------------


def _generic(s: HFSampler):
    """The same sampler through transformers' forward with one KV copy per row (the path of other architectures)."""
    dec = s.decoder
    s.decoder = None
    return dec


def test_llama_models_take_the_shared_prefix_path_automatically(sampler):
    assert sampler.decoder is not None
    sampler.sample(PROMPTS[:1], n=3, temperature=1.0, max_new_tokens=4, progress=False)
    assert sampler.last_stats.prefill_tokens == len(sampler.tok(sampler.render(PROMPTS[0]), add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_shared_prefix_path_gives_the_generic_paths_samples(tiny_model_dir, temperature):
    """Same rows, same seeds: the tokens agree (the tiny model's logits differ only by float rounding)."""
    s = HFSampler(str(tiny_model_dir), batch_size=4, seed=0)
    kw = dict(n=3, temperature=temperature, max_new_tokens=16, keys=["a", "b", "c"], progress=False)
    fast = s.sample(PROMPTS, **kw)
    assert s.last_stats.rebuilds >= 2  # rows of different prompts shared batches and left mid-way
    _generic(s)
    assert s.sample(PROMPTS, **kw) == fast


def test_shared_prefix_attention_matches_full_attention_within_rounding(tiny_model_dir):
    """Logits of each decode step (prompt KV shared by 3 rows each) vs transformers' forward over the whole sequence."""
    s = HFSampler(str(tiny_model_dir), batch_size=8, seed=0)
    steps: list = []
    real = s._forward

    def spy(input_ids, attention_mask, position_ids, cache):
        logits = real(input_ids, attention_mask, position_ids, cache)
        if attention_mask is None:  # a decode step of the fast path
            steps.append((input_ids[:, -1].tolist(), logits.clone()))
        return logits

    s._forward = spy
    s.sample(PROMPTS[:2], n=3, temperature=1.0, max_new_tokens=6, progress=False)
    assert s.last_stats.rebuilds == 1 and len(steps) == 5  # one batch of 6 rows throughout: row order is fixed
    ids = [s.tok(s.render(p), add_special_tokens=False)["input_ids"] for p in PROMPTS[:2]]
    with torch.inference_mode():
        for r in range(6):
            seq = ids[r // 3] + [inp[r] for inp, _ in steps]
            ref = s.model(input_ids=torch.tensor([seq])).logits[0, len(ids[r // 3]) - 1 :]
            got = torch.stack([logits[r] for _, logits in steps])
            assert torch.allclose(got, ref[1:], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_decoder_follows_in_place_weight_updates(tiny_model_dir, dtype):
    """A trainer updates the policy in place between sampling calls: the decode step's own weights (fused; in bfloat16
    also prepacked) are rebuilt, so it samples as a sampler built on the updated model."""
    s = HFSampler(str(tiny_model_dir), dtype=dtype, batch_size=4, seed=0)
    kw = dict(n=2, temperature=1.0, max_new_tokens=8, progress=False)
    before = s.sample(PROMPTS, **kw)
    with torch.no_grad():
        for layer in s.model.model.layers:
            layer.mlp.up_proj.weight.mul_(-3.0)
            layer.self_attn.k_proj.weight.mul_(2.0)
            layer.self_attn.o_proj.weight.mul_(2.0)
        s.model.lm_head.weight.mul_(-1.0)
    after = s.sample(PROMPTS, **kw)
    assert _texts(after) != _texts(before)
    fresh = HFSampler(str(tiny_model_dir), batch_size=4, seed=0, model=s.model, tok=s.tok)
    assert _texts(fresh.sample(PROMPTS, **kw)) == _texts(after)
    if dtype == "float32":
        _generic(fresh)  # transformers' forward reads the live weights
        assert _texts(fresh.sample(PROMPTS, **kw)) == _texts(after)


def test_bf16_decoder_falls_back_to_plain_linears_with_one_warning(tiny_model_dir, monkeypatch):
    """Where oneDNN cannot prepack weights, the decode step warns once and uses F.linear; its samples are the same."""
    from medssr import sampling

    kw = dict(n=2, temperature=1.0, max_new_tokens=8, progress=False)
    packed = HFSampler(str(tiny_model_dir), dtype="bfloat16", batch_size=4, seed=0)
    expected = packed.sample(PROMPTS, **kw)

    def unavailable(*args, **kwargs):
        raise RuntimeError("no oneDNN here")

    sampling._packing_fails.cache_clear()
    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", unavailable)
    try:
        with pytest.warns(UserWarning, match="prepacked"):
            plain = HFSampler(str(tiny_model_dir), batch_size=4, seed=0, model=packed.model, tok=packed.tok)
            got = plain.sample(PROMPTS, **kw)
        assert plain.decoder._linear is torch.nn.functional.linear
        assert _texts(got) == _texts(expected)
    finally:
        monkeypatch.undo()
        sampling._packing_fails.cache_clear()


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_qwen_models_take_the_fast_path_and_match_the_generic_one(tiny_model_dir, arch):
    """Qwen2 (q/k/v biases) and Qwen3 (q/k norms) use the same decode step; tiny random ones, SmolLM2's tokenizer."""
    import transformers

    from medssr.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    cfg_cls, model_cls = {"qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
                          "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM)}[arch]
    torch.manual_seed(0)
    cfg = cfg_cls(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=4096, tie_word_embeddings=True,
                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = model_cls(cfg).eval()
    if arch == "qwen2":
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_proj.bias.normal_(0, 0.5)
                layer.self_attn.k_proj.bias.normal_(0, 0.5)
    s = HFSampler(str(tiny_model_dir), batch_size=4, seed=0, model=model, tok=tok)
    assert s.decoder is not None
    kw = dict(n=2, temperature=1.0, max_new_tokens=10, progress=False)
    fast = s.sample(PROMPTS, **kw)
    _generic(s)
    assert s.sample(PROMPTS, **kw) == fast


def test_other_architectures_use_transformers_forward(tiny_model_dir):
    from medssr.sampling import _decoder_for

    class Other(torch.nn.Module):
        config = None

    assert _decoder_for(Other()) is None


# --- vllm backend: what needs no engine (tests/test_vllm_engine.py runs the engine) ---------------------------


def test_vllm_max_model_len_is_bounded_not_the_models_131k(tmp_path):
    """Without a bound vLLM sizes for the model's full context: 131K tokens of Llama-3.1 = 16 GiB of KV per sequence."""
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 131072}))
    assert resolve_max_model_len(str(tmp_path), 4096) == 4096 + 2048
    assert resolve_max_model_len(str(tmp_path), 4096, explicit=12000) == 12000
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 2048}))
    assert resolve_max_model_len(str(tmp_path), 4096) == 2048


def test_vllm_backend_without_its_env_says_how_to_make_it(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSSR_VLLM_PYTHON", str(tmp_path / "no-venv" / "bin" / "python"))
    with pytest.raises(RuntimeError, match="make vllm-env"):
        make_sampler(str(tiny_model_dir), backend="vllm")


# --- data parallel: N samplers on slices of the prompts ----------------------------------------------------------


def test_two_hf_engines_split_the_prompts_and_give_one_engines_samples(tiny_model_dir):
    """batch_size 1 makes every row's batch composition the same either way, so the samples are bit-identical."""
    one = make_sampler(str(tiny_model_dir), batch_size=1, seed=3)
    two = make_sampler(str(tiny_model_dir), batch_size=1, seed=3, sampling=SamplingCfg(engines=2, dtype="float32"))
    assert isinstance(two, ShardedSampler) and len(two.shards) == 2
    assert two.shards[0].model is two.shards[1].model and two.shards[0].tok is not two.shards[1].tok  # one copy of the weights
    prompts = PROMPTS + ["Define anemia."]
    kw = dict(n=2, temperature=1.0, max_new_tokens=6, keys=[f"q{i}" for i in range(4)], progress=False)
    done: list[int] = []
    got = two.sample(prompts, on_prompt_done=lambda i, c: done.append(i), **kw)
    assert got == one.sample(prompts, **kw) and sorted(done) == [0, 1, 2, 3]
    assert two.last_stats.sequences == 8
    letters = [list(OPTIONS)] * 3
    assert two.constrained_choice(PROMPTS, letters) == one.constrained_choice(PROMPTS, letters)
    two.close()
    assert all(s.model is None for s in two.shards)


def test_two_hf_engines_give_their_slices_samples_run_one_by_one_and_repeat_exactly(tiny_model_dir):
    """batch_size 4 lets the rows of a slice share batches (so the composition moves the floats): each engine must
    sample exactly its contiguous slice, seeded per row, and two runs must be byte-identical."""
    two = make_sampler(str(tiny_model_dir), batch_size=4, seed=5, sampling=SamplingCfg(engines=2, dtype="float32"))
    one = HFSampler(str(tiny_model_dir), batch_size=4, seed=5)
    prompts = PROMPTS + ["Define anemia.", "Name a rare disease of the liver."]
    keys = [f"q{i}" for i in range(5)]
    kw = dict(n=3, temperature=1.0, max_new_tokens=10, progress=False)
    got = two.sample(prompts, keys=keys, **kw)
    alone = one.sample(prompts[:2], keys=keys[:2], **kw) + one.sample(prompts[2:], keys=keys[2:], **kw)  # slices 0:2, 2:5
    assert got == alone
    assert two.sample(prompts, keys=keys, **kw) == got
    assert len({c.text for cs in got for c in cs}) > 5  # rows are seeded apart, not one stream copied


def _thread_log(sampler: ShardedSampler) -> list[tuple[int, int]]:
    """(thread id, torch threads) of every shard call, recorded from inside the shard's work."""
    import threading

    log: list[tuple[int, int]] = []
    for s in sampler.shards:
        for name in ("sample_ids", "constrained_choice"):
            inner = getattr(s, name)

            def spy(*a, _inner=inner, **k):
                log.append((threading.get_ident(), torch.get_num_threads()))
                return _inner(*a, **k)

            setattr(s, name, spy)
    return log


def test_cpu_engines_each_run_on_their_share_of_torch_threads_and_the_count_is_restored(tiny_model_dir):
    two = make_sampler(str(tiny_model_dir), batch_size=4, sampling=SamplingCfg(engines=2, dtype="float32"))
    log = _thread_log(two)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two.sample(PROMPTS, n=2, temperature=1.0, max_new_tokens=4, progress=False)
        assert torch.get_num_threads() == 2
        two.constrained_choice(PROMPTS, [list(OPTIONS)] * 3)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert [t for _, t in log] == [1, 1, 1, 1]  # 2 engines x 1 thread, not 2 x 2 on 2 cores
    assert len({ident for ident, _ in log[:2]}) == 2  # the two engines ran on two threads at once


def test_run_split_divides_the_threads_and_restores_them_even_after_an_error():
    import threading

    from medssr.sampling import run_split

    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        assert run_split([torch.get_num_threads] * 2) == [2, 2]
        assert run_split([torch.get_num_threads] * 3) == [1, 1, 1]  # at least one each
        assert run_split([torch.get_num_threads]) == [4]  # one job runs in the caller, with every thread
        assert run_split([torch.get_num_threads] * 2, split_threads=False) == [4, 4]  # e.g. vLLM engines: no torch work here
        torch.set_num_threads(1)
        assert run_split([threading.get_ident] * 2) == [threading.get_ident()] * 2  # fewer threads than jobs: in turn, here
        torch.set_num_threads(4)

        def boom() -> int:
            raise RuntimeError("shard failed")

        with pytest.raises(RuntimeError, match="shard failed"):
            run_split([torch.get_num_threads, boom])
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)


def test_unknown_backend_is_an_error_naming_the_param(tiny_model_dir):
    with pytest.raises(ValueError, match="sampling.backend"):
        make_sampler(str(tiny_model_dir), backend="tgi")


# --- the sampling dtype (sampling.dtype) ---------------------------------------------------------------------------


def _bf16_fast(monkeypatch, cpu: bool, cuda: bool = False) -> None:
    import medssr.sampling

    monkeypatch.setattr(medssr.sampling, "cpu_bf16_is_fast", lambda: cpu)
    monkeypatch.setattr(medssr.sampling, "cuda_bf16_is_fast", lambda: cuda)


@pytest.mark.parametrize("amx", [True, False], ids=["amx", "no-amx"])
def test_auto_dtype_is_bfloat16_only_where_the_cpu_runs_it_faster(monkeypatch, amx):
    from medssr.sampling import resolve_sampling_dtype

    _bf16_fast(monkeypatch, cpu=amx)
    assert resolve_sampling_dtype(SamplingCfg(), "float32") == ("bfloat16" if amx else "float32")
    assert resolve_sampling_dtype(SamplingCfg(), "bfloat16") == "bfloat16"
    assert resolve_sampling_dtype(SamplingCfg(), "float16") == "float16"  # auto never swaps one half precision for another
    for explicit in ("float32", "bfloat16", "float16"):
        assert resolve_sampling_dtype(SamplingCfg(dtype=explicit), "float32") == explicit
    assert resolve_sampling_dtype(None, "float32") == "float32"  # no sampling config: model.dtype


@pytest.mark.parametrize("cuda", [True, False], ids=["ampere", "pre-ampere"])
def test_auto_dtype_of_vllm_engines_is_bfloat16_only_on_gpus_with_it(monkeypatch, cuda):
    from medssr.sampling import resolve_sampling_dtype

    _bf16_fast(monkeypatch, cpu=not cuda, cuda=cuda)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert resolve_sampling_dtype(SamplingCfg(backend="vllm"), "float32") == ("bfloat16" if cuda else "float32")
    assert resolve_sampling_dtype(SamplingCfg(backend="hf"), "float32") == ("float32" if cuda else "bfloat16")  # hf: CPU
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU visible: vLLM-CPU, whose bf16 samples do not repeat run to run
    _bf16_fast(monkeypatch, cpu=True, cuda=cuda)
    assert resolve_sampling_dtype(SamplingCfg(backend="vllm"), "float32") == "float32"
    assert resolve_sampling_dtype(SamplingCfg(backend="vllm", dtype="bfloat16"), "float32") == "bfloat16"


@pytest.mark.parametrize(("flags", "torch_says", "fast"), [
    ({"avx512f", "amx_tile", "amx_bf16"}, True, True),
    ({"avx512f", "avx512_bf16"}, True, False),  # CPUID has AMX but the kernel does not enable it (or only AVX512-BF16)
    ({"avx512f", "amx_tile", "amx_bf16"}, False, False),
    (None, True, True),  # no /proc/cpuinfo (not Linux): torch's check alone
], ids=["amx", "kernel-without-amx", "torch-without-amx", "no-proc"])
def test_cpu_bf16_check_wants_amx_from_both_the_kernel_and_torch(monkeypatch, flags, torch_says, fast):
    import medssr.sampling

    monkeypatch.setattr(medssr.sampling, "_proc_cpu_flags", lambda: None if flags is None else frozenset(flags))
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: torch_says, raising=False)
    assert medssr.sampling.cpu_bf16_is_fast.__wrapped__() is fast


@pytest.mark.parametrize("amx", [True, False], ids=["amx", "no-amx"])
def test_make_sampler_loads_the_weights_in_the_resolved_dtype(tiny_model_dir, monkeypatch, amx):
    _bf16_fast(monkeypatch, cpu=amx)
    want = torch.bfloat16 if amx else torch.float32
    two = make_sampler(str(tiny_model_dir), dtype="float32", batch_size=4, sampling=SamplingCfg(engines=2))
    assert two.dtype == str(want).removeprefix("torch.") and all(s.dtype == two.dtype for s in two.shards)
    assert {p.dtype for p in two.shards[0].model.parameters()} == {want}
    assert make_sampler(str(tiny_model_dir), dtype="float32").dtype == "float32"  # no sampling config: model.dtype


def test_vllm_engines_get_the_resolved_dtype(tiny_model_dir, monkeypatch):
    import medssr.sampling

    _bf16_fast(monkeypatch, cpu=False, cuda=True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    got: list[str] = []

    class Engine:
        def __init__(self, model_dir, dtype, **kw):
            got.append(dtype)

        def wait_ready(self):
            return {}

    monkeypatch.setattr(medssr.sampling, "VLLMSampler", Engine)
    make_sampler(str(tiny_model_dir), backend="vllm", dtype="float32", sampling=SamplingCfg(backend="vllm"))
    make_sampler(str(tiny_model_dir), backend="vllm", dtype="float32", sampling=SamplingCfg(backend="vllm", dtype="float32"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # vLLM on CPU: model.dtype, also when the config's backend says hf
    _bf16_fast(monkeypatch, cpu=True)
    make_sampler(str(tiny_model_dir), backend="vllm", dtype="float32", sampling=SamplingCfg())
    assert got == ["bfloat16", "float32", "float32"]


@pytest.fixture(scope="module")
def bf16_sampler(tiny_model_dir) -> HFSampler:
    return HFSampler(str(tiny_model_dir), dtype="bfloat16", batch_size=4, seed=0)


def test_bf16_shared_prefix_logits_match_transformers_bf16_forward_within_bf16_rounding(tiny_model_dir):
    """As the float32 test above, in bfloat16: each decode step's logits vs the whole sequence through transformers."""
    s = HFSampler(str(tiny_model_dir), dtype="bfloat16", batch_size=8, seed=0)
    assert s.decoder is not None and s.dtype == "bfloat16"
    steps: list = []
    real = s._forward

    def spy(input_ids, attention_mask, position_ids, cache):
        logits = real(input_ids, attention_mask, position_ids, cache)
        if attention_mask is None:
            steps.append((input_ids[:, -1].tolist(), logits.clone()))
        return logits

    s._forward = spy
    s.sample(PROMPTS[:2], n=3, temperature=1.0, max_new_tokens=6, progress=False)
    assert s.last_stats.rebuilds == 1 and len(steps) == 5 and steps[0][1].dtype == torch.bfloat16
    ids = [s.tok(s.render(p), add_special_tokens=False)["input_ids"] for p in PROMPTS[:2]]
    eps = torch.finfo(torch.bfloat16).eps  # 2^-7: one unit in the last place at magnitude 1
    with torch.inference_mode():
        for r in range(6):
            seq = ids[r // 3] + [inp[r] for inp, _ in steps]
            ref = s.model(input_ids=torch.tensor([seq])).logits[0, len(ids[r // 3]) :].float()
            got = torch.stack([logits[r] for _, logits in steps]).float()
            assert (got - ref).abs().max() <= 2 * eps * ref.abs().max()  # a couple of bf16 ulps (float32: 1e-4)


def test_bf16_samples_repeat_exactly_and_do_not_depend_on_the_other_prompts(bf16_sampler):
    kw = dict(n=3, temperature=1.0, max_new_tokens=10, progress=False)
    a = bf16_sampler.sample(PROMPTS, keys=["q-pneumonia", "q-hi", "q-anemia"], **kw)
    assert bf16_sampler.sample(PROMPTS, keys=["q-pneumonia", "q-hi", "q-anemia"], **kw) == a
    alone = bf16_sampler.sample([PROMPTS[1]], keys=["q-hi"], **kw)
    assert _texts(alone)[0] == _texts(a)[1]
    assert len({c.text for cs in a for c in cs}) > 5


def test_bf16_engines_give_their_slices_samples_and_repeat_exactly(tiny_model_dir, bf16_sampler):
    two = make_sampler(str(tiny_model_dir), batch_size=4, seed=0, sampling=SamplingCfg(engines=2, dtype="bfloat16"))
    prompts = PROMPTS + ["Define anemia.", "Name a rare disease of the liver."]
    keys = [f"q{i}" for i in range(5)]
    kw = dict(n=3, temperature=1.0, max_new_tokens=10, progress=False)
    got = two.sample(prompts, keys=keys, **kw)
    assert got == bf16_sampler.sample(prompts[:2], keys=keys[:2], **kw) + bf16_sampler.sample(prompts[2:], keys=keys[2:], **kw)
    assert two.sample(prompts, keys=keys, **kw) == got


# --- the real policy (slow) ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_votes_on_real_medqa_questions(smol_model_dir, raw_dir):
    from medssr.answers import has_committed_answer
    from medssr.data.loaders import load_benchmark_file
    from medssr.synth.prompts import load_prompt

    qs = load_benchmark_file(raw_dir / "benchmarks" / "test_short_medqa.json.gz")[:2]
    tpl = load_prompt("eval_f4")
    s = HFSampler(str(smol_model_dir), batch_size=8)
    res = s.sample([tpl.render(question=q.render()) for q in qs], n=4, temperature=1.0, max_new_tokens=128,
                   options=[q.options for q in qs], keys=[q.id for q in qs], progress=False)
    assert [len(c) for c in res] == [4, 4]
    for q, comps in zip(qs, res, strict=True):
        for c in comps:
            assert len(c.text.split()) >= 1 and c.n_tokens >= 1
            if c.finish_reason == "answer":  # the incrementally decoded text it stopped on is the text returned
                assert has_committed_answer(c.text, q.options)
