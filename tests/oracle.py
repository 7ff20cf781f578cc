"""Straightforward reference implementations the fast paths are checked against (and benchmarked against)."""

from __future__ import annotations

import copy
from typing import Any

import torch

from headpatch.architectures import HeadLayout, o_proj_modules
from headpatch.options import LocateOptions
from headpatch.pear.locate import _chunks, _removed_after, ablate_hook, clean_run
from headpatch.pear.proxy import CopyBatch
from headpatch.runtime import cache_argument


@torch.no_grad()
def naive_head_effects(
    model: Any, batch: CopyBatch, layout: HeadLayout, options: LocateOptions, heads: list[tuple[int, int]] | None = None
) -> torch.Tensor:
    """Δπ per head by re-running the whole sequence once per head with that head mean-ablated at the scored position.

    `heads` restricts the work to some heads (the others stay 0), for benchmarks that time a sample.
    """
    modules = o_proj_modules(model, layout)
    clean = clean_run(model, batch, layout, options.mean_vector)
    s = batch.scored_position
    ids = batch.input_ids.to(next(model.parameters()).device)
    effects = torch.zeros(layout.num_layers, layout.num_heads)
    every = [(layer, head) for layer in range(layout.num_layers) for head in range(layout.num_heads)]
    for layer, head in heads or every:
        cols = slice(head * layout.head_dim, (head + 1) * layout.head_dim)

        def ablate(module, args, layer=layer, cols=cols):
            x = args[0].clone()
            x[:, s, cols] = clean.means[layer][:, cols].to(x.dtype)
            return (x,) + tuple(args[1:])

        handles = [modules[layer].register_forward_pre_hook(ablate)]
        if options.propagation == "direct":
            for later in range(layer + 1, layout.num_layers):

                def freeze(module, args, output, later=later):
                    output = output.clone()
                    output[:, s] = clean.attn_out[later].to(output.dtype)
                    return output

                handles.append(modules[later].register_forward_hook(freeze))
        try:
            logits = model(input_ids=ids, use_cache=False).logits[:, s].float()
        finally:
            for handle in handles:
                handle.remove()
        picked = logits.gather(1, clean.target[:, None]).squeeze(1)
        effects[layer, head] = (picked / clean.logit - 1).mean().cpu()
    return effects


@torch.no_grad()
def whole_model_head_effects(model: Any, batch: CopyBatch, layout: HeadLayout, options: LocateOptions) -> torch.Tensor:
    """Δπ per head the way headpatch 0.1's fast path computed it: the scored position from a shared cache, but every
    layer and the whole vocabulary recomputed for every ablation, later attention frozen by hooks. The reference the
    upper-part path is held to, and the "before" of bench/locate_speed.py."""
    modules = o_proj_modules(model, layout)
    clean = clean_run(model, batch, layout, options.mean_vector)
    s = batch.scored_position
    scored_ids = batch.input_ids[:, s : s + 1].to(clean.target.device)
    samples = len(scored_ids)
    repeated: dict[int, Any] = {}
    effects = torch.zeros(layout.num_layers, layout.num_heads)
    for layer in range(layout.num_layers):
        for heads in _chunks(list(range(layout.num_heads)), max(1, options.max_rows // samples)):
            copies = len(heads)
            if copies not in repeated:
                repeated[copies] = copy.deepcopy(clean.cache)
                repeated[copies].batch_repeat_interleave(copies)
            handles = [modules[layer].register_forward_pre_hook(ablate_hook(clean.means[layer], heads, layout))]
            if options.propagation == "direct":
                for later in range(layer + 1, layout.num_layers):
                    frozen = clean.attn_out[later].repeat_interleave(copies, dim=0)[:, None]
                    handles.append(modules[later].register_forward_hook(
                        lambda module, args, output, frozen=frozen: frozen.to(output.dtype).expand_as(output)))
            with _removed_after(handles):
                logits = model(input_ids=scored_ids.repeat_interleave(copies, 0), use_cache=True,
                               **cache_argument(model, repeated[copies])).logits[:, -1].float()
            repeated[copies].crop(-1)
            picked = logits.gather(1, clean.target.repeat_interleave(copies)[:, None]).view(samples, copies)
            effects[layer, heads] = (picked / clean.logit[:, None] - 1).mean(0).cpu()
    return effects
