"""Grouped GRPO log-probs (medssr/rl/grouped_logps.py) equal TRL's per-row ones: values, entropies, gradients, trained weights."""

from __future__ import annotations

import copy
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch

from medssr.rl import grouped_logps

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PAD = 0


def _model(temperature: float = 0.7, *, seed: int = 0, attn: str = "sdpa", hidden: int = 32):
    """A tiny random fp32 Llama patched with TRL's fused LM head, as GRPOTrainer patches the policy."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=97, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, pad_token_id=PAD, tie_word_embeddings=True,
                      attn_implementation=attn)
    model = LlamaForCausalLM(cfg).float()
    add_fused_lm_head(model, temperature=temperature, outputs=("log_probs", "entropy"))
    return model


def _trl(model, input_ids, mask, keep, **kw):
    """TRL's own method, called on a stand-in trainer (it only needs ``accelerator.autocast``)."""
    from trl import GRPOTrainer

    me = SimpleNamespace(accelerator=SimpleNamespace(autocast=nullcontext, is_main_process=True))
    logps, ent, _ = GRPOTrainer._get_per_token_logps_and_entropies(me, model, input_ids, mask, keep, **kw)
    return logps, ent


def _batch(prompt_lens, g, order, *, comp_len=7, seed=1):
    """TRL's layout: prompts left-padded to the longest, each repeated G times, completions right-padded; rows in ``order``."""
    gen = torch.Generator().manual_seed(seed)
    p = max(prompt_lens)
    prompts, pmask, comps, cmask = [], [], [], []
    for n in prompt_lens:
        ids = torch.randint(1, 97, (n,), generator=gen)
        for _ in range(g):
            prompts.append(torch.cat([torch.full((p - n,), PAD), ids]))
            pmask.append(torch.cat([torch.zeros(p - n, dtype=torch.long), torch.ones(n, dtype=torch.long)]))
            length = int(torch.randint(1, comp_len + 1, (1,), generator=gen))
            comps.append(torch.cat([torch.randint(1, 97, (length,), generator=gen), torch.full((comp_len - length,), PAD)]))
            cmask.append(torch.cat([torch.ones(length, dtype=torch.long), torch.zeros(comp_len - length, dtype=torch.long)]))
    cat = [torch.stack(x)[order] for x in (prompts, pmask, comps, cmask)]
    return torch.cat([cat[0], cat[2]], 1), torch.cat([cat[1], cat[3]], 1), comp_len


CASES = {
    # prompt lengths (each its own left padding), G, row order (TRL shuffles the generation batch before splitting it)
    "g2_adjacent": ([5, 9, 3], 2, list(range(6))),
    "g4_shuffled": ([6, 11], 4, [3, 5, 0, 7, 1, 4, 6, 2]),
    "g4_three_groups_one_row_split_off": ([4, 10, 7], 4, [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11][:11]),
    "g2_same_length_prompts": ([8, 8, 8], 2, [5, 0, 3, 1, 4, 2]),
}


@pytest.mark.parametrize("case", CASES)
def test_log_probs_and_entropies_equal_trls(case):
    lens, g, order = CASES[case]
    model = _model()
    ids, mask, keep = _batch(lens, g, order)
    assert grouped_logps.worth_grouping(ids, mask, keep)
    with torch.no_grad():
        ref_lp, ref_ent = _trl(model, ids, mask, keep, compute_entropy=True)
        lp, ent = grouped_logps.per_token_logps_and_entropies(model, ids, mask, keep, compute_entropy=True)
    assert lp.shape == ref_lp.shape == (len(order), keep)
    assert (lp - ref_lp).abs().max() < 1e-5
    assert (ent - ref_ent).abs().max() < 1e-5
    assert torch.equal(lp == 0, ref_lp == 0)  # padded completion tokens score 0 in both


def test_batch_size_chunks_by_whole_groups_and_changes_nothing():
    model = _model()
    ids, mask, keep = _batch([4, 10, 7], 4, [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11])
    with torch.no_grad():
        ref_lp, _ = _trl(model, ids, mask, keep, batch_size=4)
        for batch_size in (1, 4, 5, None):
            lp, ent = grouped_logps.per_token_logps_and_entropies(model, ids, mask, keep, batch_size=batch_size)
            assert ent is None and (lp - ref_lp).abs().max() < 1e-5, batch_size


def test_eager_attention_equals_trls_too():
    model = _model(attn="eager")
    ids, mask, keep = _batch([5, 9], 4, [1, 4, 6, 0, 2, 7, 3, 5])
    with torch.no_grad():
        ref_lp, ref_ent = _trl(model, ids, mask, keep, compute_entropy=True)
        lp, ent = grouped_logps.per_token_logps_and_entropies(model, ids, mask, keep, compute_entropy=True)
    assert (lp - ref_lp).abs().max() < 1e-5 and (ent - ref_ent).abs().max() < 1e-5


@pytest.mark.parametrize("g", [2, 4])
def test_gradients_of_every_parameter_equal_trls(g):
    """The shared prompt forward gets the gradients of all G completions (sum of log-probs x random weights + entropy)."""
    ids, mask, keep = _batch([6, 12, 3], g, torch.randperm(3 * g, generator=torch.Generator().manual_seed(g)).tolist())
    weights = torch.randn(ids.size(0), keep, generator=torch.Generator().manual_seed(7))
    grads = []
    for fn in (_trl, lambda m, *a, **kw: grouped_logps.per_token_logps_and_entropies(m, *a, **kw)):
        model = _model()
        lp, ent = fn(model, ids, mask, keep, compute_entropy=True)
        ((lp * weights).sum() + 0.1 * ent.sum()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    theirs, ours = grads
    assert theirs.keys() == ours.keys()
    for name, t in theirs.items():
        assert t.abs().max() > 0, name
        assert (ours[name] - t).norm() <= 1e-5 * t.norm() + 1e-7, name


def test_gradients_are_bitwise_the_same_in_every_call_with_two_threads():
    """The G rollouts' gradients reach their shared prompt KV summed in a fixed order. With an index (``keys[rows]``)
    the backward added them with parallel atomic float adds once the KV passed torch's grain (32768 values) and more
    than one thread ran: the low bits changed from call to call, and a GRPO step was not reproducible run to run."""
    model = _model(hidden=128)  # head_dim 32: the 8 rows' KV of the 120-token prompt is 8 x 2 x 119 x 32 = 60928 values
    ids, mask, keep = _batch([120], 8, list(range(8)))
    weights = torch.randn(ids.size(0), keep, generator=torch.Generator().manual_seed(7))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for _ in range(20):
            model.zero_grad(set_to_none=True)
            lp, _ = grouped_logps.per_token_logps_and_entropies(model, ids, mask, keep)
            (lp * weights).sum().backward()
            grads.append([p.grad.clone() for p in model.parameters()])
    finally:
        torch.set_num_threads(before)
    differing = [i for i, g in enumerate(grads) if not all(torch.equal(a, b) for a, b in zip(g, grads[0], strict=True))]
    assert differing == []


@pytest.mark.parametrize("mistake", ["completion_positions_restart_at_0", "completions_one_position_late", "rows_in_the_wrong_group"])
def test_the_comparison_with_trl_catches_a_wrong_grouping(mistake, monkeypatch):
    """Each plausible mistake makes the grouped result differ from TRL's by well over the 1e-5 the tests allow.
    (A constant position offset per row is not among them: RoPE scores depend only on relative positions.)"""
    import torch

    model = _model()
    ids, mask, keep = _batch([5, 9], 2, [0, 2, 1, 3])
    head = ids.size(1) - keep - 1
    right_positions, right_groups = grouped_logps.positions, grouped_logps.prompt_groups
    if mistake == "completion_positions_restart_at_0":
        monkeypatch.setattr(grouped_logps, "positions", lambda n, d: torch.cat([torch.arange(head), torch.arange(n - head)]).unsqueeze(0))
    elif mistake == "completions_one_position_late":
        monkeypatch.setattr(grouped_logps, "positions", lambda n, d: right_positions(n, d) + (torch.arange(n) >= head))
    else:
        monkeypatch.setattr(grouped_logps, "prompt_groups", lambda p, m: (right_groups(p, m)[0], torch.tensor([1, 0, 1, 0])))
    with torch.no_grad():
        ref_lp, _ = _trl(model, ids, mask, keep)
        lp, _ = grouped_logps.per_token_logps_and_entropies(model, ids, mask, keep)
    assert (lp - ref_lp).abs().max() > 1e-4  # 10x the tolerance; the random tiny model's logits are nearly flat


def test_rows_are_grouped_by_prompt_ids_and_mask_in_order_of_first_appearance():
    ids = torch.tensor([[0, 5, 6], [7, 5, 6], [0, 5, 6], [7, 5, 6], [0, 5, 6]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1], [0, 1, 1], [1, 1, 1], [1, 1, 1]])  # last row: same ids, other mask
    first, group = grouped_logps.prompt_groups(ids, mask)
    assert first.tolist() == [0, 1, 4] and group.tolist() == [0, 1, 0, 1, 2]


def test_nothing_to_share_or_unsupported_models_fall_back():
    ids, mask, keep = _batch([4, 6], 1, [0, 1])
    assert not grouped_logps.worth_grouping(ids, mask, keep)  # G = 1: every prompt its own
    model = _model()
    assert grouped_logps.unsupported(model, grad=True) is None
    (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    assert "checkpointing" in grouped_logps.unsupported(model, grad=True)
    assert grouped_logps.unsupported(model, grad=False) is None
    assert "wrapped" in grouped_logps.unsupported(torch.nn.Sequential(model), grad=False)
    plain = copy.deepcopy(model)
    del plain.forward  # the instance attribute TRL's patch set
    assert "fused" in grouped_logps.unsupported(plain, grad=False)


# ---- end to end: a real GRPO run on the tiny Llama -----------------------------------------------------------------

def _run(tiny_model_dir, tmp_path, grouped: bool, monkeypatch, steps: int = 2):
    """``steps`` GRPO steps, G = 4, KL on (reference model scored too), a reward that varies in every group."""
    from medssr.config import load_params
    from medssr.data.loaders import load_medmcqa
    from medssr.rl import trl_backend
    from medssr.rl.data import examples_from_questions, load_prompt_template, to_trl_dataset
    from tests.conftest import RAW, ROOT

    calls = []
    real = grouped_logps.per_token_logps_and_entropies
    monkeypatch.setattr(grouped_logps, "per_token_logps_and_entropies", lambda *a, **kw: calls.append(1) or real(*a, **kw))

    def alternating(prompts, completions, **kwargs) -> list[float]:
        return [float(i % 2 == 0) + 0.1 * len(c) for i, c in enumerate(completions)]

    p = load_params(ROOT / "params.yaml", {
        "train.num_generations": 4, "train.per_device_batch_size": 8, "train.max_completion_length": 8, "train.save_steps": 100,
        "train.stage1": {"max_steps": steps, "learning_rate": 1e-3, "beta": 0.04, "max_samples": 8}})
    examples, _ = examples_from_questions(load_medmcqa(RAW)[:4], "real")
    trainer = trl_backend.build_trainer(tiny_model_dir, to_trl_dataset(examples, load_prompt_template()), "gold", p.train, p.train.stage1,
                                        run_dir=tmp_path / "run", reward_funcs=[alternating])
    trainer.grouped_logps = grouped
    assert trl_backend.attach_rollouts(trainer, "hf", tiny_model_dir) == "hf"
    trainer.train()
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, len(calls)


def test_a_grpo_run_trains_the_same_weights_with_and_without_grouping(tiny_model_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    ours, grouped_calls = _run(tiny_model_dir, tmp_path / "grouped", True, monkeypatch)
    theirs, plain_calls = _run(tiny_model_dir, tmp_path / "trl", False, monkeypatch)
    assert (plain_calls, grouped_calls) == (0, 4)  # per step: the reference's and the policy's log-probs, both grouped
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    moved = max((theirs[k] - initial[k]).abs().max() for k in theirs)
    assert moved > 1e-3  # two Adam steps at lr 1e-3 moved the weights, so equal weights say something
    # Adam divides by sqrt(v): a rounding difference in a near-zero gradient entry can move that weight by up to lr, so
    # the check is per tensor, relative to how far it moved (measured: <= 7e-5), plus a loose bound on any one weight
    for k, t in theirs.items():
        assert (ours[k] - t).norm() <= 1e-3 * (t - initial[k]).norm() + 1e-7, k
        assert (ours[k] - t).abs().max() <= 5e-5, k


def test_two_grpo_runs_with_two_threads_train_bitwise_identical_weights(tiny_model_dir, tmp_path, monkeypatch):
    """Three steps: every step updates the weights and the next one samples its rollouts from them, so a difference in
    the low bits of one update changes the rest of the run (the embedded default's stage1 did, run to run)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        first, _ = _run(tiny_model_dir, tmp_path / "a", True, monkeypatch, steps=3)
        second, _ = _run(tiny_model_dir, tmp_path / "b", True, monkeypatch, steps=3)
    finally:
        torch.set_num_threads(before)
    assert [k for k in first if not torch.equal(first[k], second[k])] == []
