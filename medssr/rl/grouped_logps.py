"""Per-token log-probs (and entropies) of GRPO completions with each prompt run once per group, not once per rollout.

TRL scores a batch of G rollouts per prompt as B full ``prompt + completion`` rows, so the prompt (~80 % of the
tokens with the F.4 prompt) goes through the policy, the reference model and the backward G times. Here the rows that
share identical prompt ids and mask form a group: the group's prompt (left-padded exactly as TRL gives it, minus its
last token) runs once with a KV cache; the cache is gathered to the group's rows (``gather_rows``: an index, so the
gradients of all G completions flow back into the one prompt forward, in a fixed order) and the rows' last prompt
token + completion run against it through TRL's own fused LM head (same temperature, scaling and entropy code).
Positions are the ones TRL's full-row forward uses (0..L-1 over the padded row), so the result is TRL's up to float
rounding.

``unsupported`` says when this is not exact or not wired (other model families, wrapped models, gradient
checkpointing, ...); the trainer then calls TRL's own method.
"""

from __future__ import annotations

from typing import Any

# decoder-only families whose forward takes (input_ids, attention_mask, position_ids, past_key_values) and whose default
# position ids are the plain arange that TRL's full-row forward gets (the families medssr's sampler decodes too)
FAMILIES = ("llama", "qwen2", "qwen3")


def unsupported(model: Any, *, grad: bool) -> str | None:
    """Why ``model`` cannot be scored grouped (a reason to fall back to TRL), or None when it can."""
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        return f"wrapped model ({type(model).__name__})"  # DDP / PEFT / DeepSpeed: the backbone is not ours to call
    cfg = model.config
    if cfg.model_type not in FAMILIES:
        return f"model family {cfg.model_type!r}"
    if getattr(cfg, "use_sliding_window", False) or "sliding_attention" in (getattr(cfg, "layer_types", None) or ()):
        return "sliding-window attention"
    code = getattr(getattr(model.forward, "__func__", None), "__code__", None)
    if code is None or "fused_lm_head" not in code.co_varnames:  # TRL's add_fused_lm_head binds its forward on the instance
        return "no TRL fused LM head on the model"
    checkpointing = getattr(model, "is_activation_checkpointing", None)  # transformers 5's name; 4's below
    if checkpointing is None:
        checkpointing = getattr(model, "is_gradient_checkpointing", False)
    if grad and checkpointing:
        return "gradient checkpointing (it turns the prompt's KV cache off)"
    return None


def prompt_groups(prompt_ids: Any, prompt_mask: Any) -> tuple[Any, Any]:
    """``(first, group)``: the first row of each distinct (prompt ids, mask) and each row's group index into it."""
    import torch

    _, group = torch.unique(torch.cat([prompt_ids, prompt_mask.to(prompt_ids.dtype)], dim=1), dim=0, return_inverse=True)
    rows = torch.arange(group.numel(), device=group.device)
    first = torch.full((int(group.max()) + 1,), group.numel(), dtype=rows.dtype, device=group.device).scatter_reduce(
        0, group, rows, reduce="amin")
    order = first.argsort()  # number the groups by first appearance, so chunks follow the batch
    renumber = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
    return first[order], renumber[group]


def worth_grouping(input_ids: Any, attention_mask: Any, logits_to_keep: int) -> bool:
    """Some prompt is shared by two rows and there is a prompt token to cache (else TRL's own method is as fast)."""
    if input_ids.size(1) - logits_to_keep < 2:
        return False
    first, _ = prompt_groups(input_ids[:, :-logits_to_keep], attention_mask[:, :-logits_to_keep])
    return first.numel() < input_ids.size(0)


def gather_rows(cache: Any, index: Any) -> None:
    """Replace each layer's prompt KV in ``cache`` by its rows ``index`` (each rollout gets its group's prompt KV).

    ``index_select``, not ``DynamicCache.batch_select_indices`` (``keys[index]``): the backward of an index with repeats
    is an accumulating ``index_put_`` that on CPU adds the G rows' gradients with parallel atomic float adds, in an
    order that changes run to run, so a GRPO step was not bitwise reproducible; ``index_select``'s backward
    (``index_add_``) adds them in index order."""
    for layer in cache.layers:
        layer.keys = layer.keys.index_select(0, index)
        layer.values = layer.values.index_select(0, index)


def positions(length: int, device: Any) -> Any:
    """Position ids of TRL's full-row forward (the model's default): 0..L-1 over the left-padded row, shape (1, L)."""
    import torch

    return torch.arange(length, device=device).unsqueeze(0)


def per_token_logps_and_entropies(model: Any, input_ids: Any, attention_mask: Any, logits_to_keep: int, *, batch_size: int | None = None,
                                  compute_entropy: bool = False) -> tuple[Any, Any]:
    """TRL's ``(log_probs, entropies)`` of the last ``logits_to_keep`` tokens, shape (B, logits_to_keep), prompts once per group.

    ``model`` is TRL-patched (``add_fused_lm_head``) and passes ``unsupported``. ``batch_size`` bounds the rows of a
    chunk as in TRL (whole groups per chunk; a group larger than it is one chunk)."""
    import torch

    c = logits_to_keep
    length = input_ids.size(1)
    head = length - c - 1  # cached prompt tokens: all but the last, whose hidden state scores the first completion token
    first, group = prompt_groups(input_ids[:, :-c], attention_mask[:, :-c])
    limit = batch_size or input_ids.size(0)
    sizes = torch.bincount(group, minlength=first.numel()).tolist()
    chunks, cur, rows_in = [], [], 0
    for g, n in enumerate(sizes):
        if cur and rows_in + n > limit:
            chunks.append(cur)
            cur, rows_in = [], 0
        cur.append(g)
        rows_in += n
    chunks.append(cur)

    device = input_ids.device
    pos = positions(length, device)
    backbone = model.base_model
    all_rows, all_logps, all_entropies = [], [], []
    for groups in chunks:
        gs = torch.tensor(groups, device=device)
        rows = torch.nonzero(torch.isin(group, gs)).squeeze(1)  # batch order within the chunk
        local = torch.searchsorted(gs, group[rows])  # each row's group, as an index into this chunk's prompts
        prompt = backbone(input_ids=input_ids[first[gs], :head], attention_mask=attention_mask[first[gs], :head],
                          position_ids=pos[:, :head], use_cache=True)
        cache = prompt.past_key_values
        gather_rows(cache, local)  # indexing, not a copy of the computation: gradients reach the one prompt forward
        tail_ids = input_ids[rows, head:]
        tail_mask = attention_mask[rows, head:]
        labels = tail_ids.masked_fill(tail_mask == 0, -100)
        labels[:, 0] = -100  # the last prompt token is input only (the fused head drops the first label anyway)
        out = model(input_ids=tail_ids, attention_mask=attention_mask[rows], position_ids=pos[:, head:], past_key_values=cache,
                    labels=labels, fused_lm_head=True)
        all_rows.append(rows)
        all_logps.append(out.log_probs[:, -c:])
        if compute_entropy:
            all_entropies.append(out.entropy[:, -c:])
    back = torch.cat(all_rows).argsort()  # chunk order -> batch order
    logps = torch.cat(all_logps)[back]
    entropies = torch.cat(all_entropies)[back] if compute_entropy else None
    return logps, entropies
