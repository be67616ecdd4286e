"""GRPO rollouts through medssr's own sampler (``HFSampler``) instead of TRL's ``model.generate``.

TRL 1.16 tokenises the prompts, calls ``_generate_single_turn(prompt_ids, ...)`` for the completion ids, then
decodes them, logs the completion metrics and scores them; only that call is replaced (``trl_backend``), so
rewards, logged metrics and the loss see exactly what they see with TRL's own generation. Why this seam and not
TRL's ``rollout_func`` argument: a ``rollout_func`` owns chat templating and tokenisation too (TRL renders with its
training variant of the chat template), and it is marked experimental; here TRL's prompt ids are used as they are.

The sampler decodes with the policy module the trainer optimises (no copy); its fast path's fused q/k/v and
gate/up weights are rebuilt at every call, because the fused AdamW transformers uses by default updates parameters
without bumping the version counters its automatic check reads (without this, step 2's rollouts were drawn with the
q/k/v and gate/up weights of step 1, tests/test_trl_backend.py catches it). Sampling runs in eval mode (no dropout, no
gradient checkpointing) under inference mode, and the module's mode is restored afterwards. TRL's sampler hands
every prompt G times in a row; each group is sampled as one prompt with n = G (its prefix KV shared by its rows),
sample j of group g seeded by ``row_seed(train.seed, "<step>:<process>:<g>", j)``: the same step of two runs, or of
a run resumed from a checkpoint, draws the same rollouts from the same weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medssr.config import ConfigError

ROLLOUT_SAMPLERS = ("auto", "hf", "trl")


def choose_rollout_sampler(requested: str, *, on_cpu: bool, fast_path: bool, unsupported: Sequence[str] = ()) -> str:
    """'hf' or 'trl' for ``train.rollout_sampler`` ('auto' | 'hf' | 'trl').

    'auto' picks our sampler where it is the faster one (CPU, a Llama / Qwen2 / Qwen3 model its fast path decodes) and
    TRL's generation elsewhere; ``unsupported`` names TRL generation settings our sampler does not implement (they
    send 'auto' to TRL and make an explicit 'hf' an error).
    """
    if requested not in ROLLOUT_SAMPLERS:
        raise ConfigError(f"train.rollout_sampler: expected one of {', '.join(ROLLOUT_SAMPLERS)}, got {requested!r}")
    if requested == "hf" and unsupported:
        raise ConfigError(f"train.rollout_sampler: 'hf' cannot sample with {', '.join(unsupported)}; use 'trl' or 'auto'")
    if requested == "auto":
        return "hf" if on_cpu and fast_path and not unsupported else "trl"
    return requested


def unsupported_generation_settings(args: Any) -> list[str]:
    """The GRPOConfig generation settings TRL would apply that our sampler does not (empty: it samples as TRL would)."""
    out = []
    if getattr(args, "min_p", None) is not None:
        out.append(f"min_p={args.min_p}")
    if getattr(args, "repetition_penalty", 1.0) != 1.0:
        out.append(f"repetition_penalty={args.repetition_penalty}")
    if getattr(args, "generation_kwargs", None):
        out.append(f"generation_kwargs={args.generation_kwargs}")
    if getattr(args, "use_vllm", False):
        out.append("use_vllm")
    return out


def prompt_groups(prompt_ids: Sequence[Sequence[int]], num_generations: int) -> list[list[int]] | None:
    """The distinct prompts when ``prompt_ids`` is each of them repeated ``num_generations`` times in a row (TRL's
    order), else None (then every row is sampled as its own prompt)."""
    if num_generations < 1 or len(prompt_ids) % num_generations:
        return None
    groups = []
    for start in range(0, len(prompt_ids), num_generations):
        head = list(prompt_ids[start])
        if any(list(prompt_ids[i]) != head for i in range(start + 1, start + num_generations)):
            return None
        groups.append(head)
    return groups


def rollout_keys(step: int, process: int, count: int) -> list[str]:
    """The random-stream names of one generation call's prompts: fixed by the optimizer step, not by call order."""
    return [f"{step}:{process}:{g}" for g in range(count)]


class PolicyRollouts:
    """Completion ids for TRL's prompt ids, sampled from the live policy module with ``HFSampler``."""

    def __init__(self, model: Any, tokenizer: Any, model_dir: str, *, seed: int, temperature: float, top_p: float, top_k: int,
                 max_new_tokens: int):
        from medssr.sampling import HFSampler

        self.model = model
        self.sampler = HFSampler(model_dir, batch_size=1, seed=seed, model=model, tok=tokenizer)
        self.seed, self.temperature, self.top_p = seed, temperature, top_p
        self.top_k = top_k if top_k and top_k > 0 else -1  # TRL's 0 = no top-k, ours is -1
        self.max_new_tokens = max_new_tokens

    @property
    def fast_path(self) -> bool:
        return self.sampler.decoder is not None

    def __call__(self, prompt_ids: Sequence[Sequence[int]], num_generations: int, *, step: int, process: int = 0) -> list[list[int]]:
        """One list of token ids per row of ``prompt_ids`` (EOS kept when it ended the completion, as TRL's)."""
        groups = prompt_groups(prompt_ids, num_generations)
        prompts, n = (groups, num_generations) if groups is not None else ([list(p) for p in prompt_ids], 1)
        self.sampler.batch_size = max(1, len(prompt_ids))  # the whole generation batch decodes together
        was_training = self.model.training
        self.model.eval()
        try:
            # the trainer's default optimizer (fused AdamW) updates the weights without bumping their versions
            self.sampler.weights_changed()
            results = self.sampler.sample_ids(prompts, n, self.temperature, self.top_p, self.top_k, self.max_new_tokens, seed=self.seed,
                                              progress=False, keys=rollout_keys(step, process, len(prompts)), stop_at_answer=False)
        finally:
            self.model.train(was_training)
        return [list(c.token_ids) for comps in results for c in comps]
