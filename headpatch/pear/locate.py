"""PEAR location: the effect of mean-ablating each head on the copied token's logit, exact and cache-reusing."""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from headpatch.architectures import HeadLayout, o_proj_modules
from headpatch.heads import Head, ranked_heads
from headpatch.options import LocateOptions
from headpatch.pear.proxy import CopyBatch, copy_batch, sampleable_ids, special_prefix
from headpatch.pear.upper import UpperRun, layer_hidden, upper_part
from headpatch.runtime import cache_argument, input_device


@dataclass
class CleanRun:
    """What the unablated forward pass gives for one batch: everything an ablation needs."""

    target: torch.Tensor  # [B] the copied token x_n
    logit: torch.Tensor  # [B] its logit at the scored position
    means: list[torch.Tensor]  # per layer [B, heads*head_dim] replacement vectors
    attn_out: list[torch.Tensor]  # per layer [B, hidden] o_proj output at the scored position
    layer_in: list[torch.Tensor]  # per layer [B, hidden] residual stream entering the layer at the scored position
    cache: Any  # keys and values of the positions before the scored one


@dataclass
class LocateResult:
    """Δπ of every head, averaged over settings, with the per-setting values kept."""

    scores: torch.Tensor  # [layers, heads]
    per_setting: list[torch.Tensor] = field(default_factory=list)
    seconds: float = 0.0

    def ranked(self) -> list[Head]:
        """All heads, strongest suppressor (largest Δπ) first."""
        return ranked_heads(self.scores)


@contextmanager
def _removed_after(handles: list[Any]) -> Iterator[None]:
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def clean_run(model: Any, batch: CopyBatch, layout: HeadLayout, mean_vector: str) -> CleanRun:
    """Run the batch once without intervention and keep the logits, mean vectors, attention outputs and layer
    inputs."""
    modules = o_proj_modules(model, layout)
    s = batch.scored_position
    means: list[torch.Tensor] = [None] * layout.num_layers  # type: ignore[list-item]
    attn_out: list[torch.Tensor] = [None] * layout.num_layers  # type: ignore[list-item]
    layer_in: list[torch.Tensor] = [None] * layout.num_layers  # type: ignore[list-item]

    def capture(layer: int):
        def hook(module: Any, args: tuple, output: torch.Tensor) -> None:
            x = args[0]
            means[layer] = x.mean(dim=1) if mean_vector == "sequence" else x[:, s].mean(0).expand(len(x), -1)
            attn_out[layer] = output[:, s].clone()

        return hook

    def capture_input(layer: int):
        def hook(module: Any, args: tuple, kwargs: dict) -> None:
            layer_in[layer] = layer_hidden(args, kwargs)[:, s].clone()

        return hook

    device = input_device(model)
    ids = batch.input_ids.to(device)
    after = ids.shape[1] - s
    # A cache without the config keeps every key in every layer: a sliding-window layer's cache would drop the oldest
    # and could not be rolled back, while the model's own mask still limits that layer to its window.
    cache = DynamicCache()
    layers = model.get_submodule(layout.layers_name)
    handles = [module.register_forward_hook(capture(i)) for i, module in enumerate(modules)]
    handles += [layers[i].register_forward_pre_hook(capture_input(i), with_kwargs=True) for i in range(len(layers))]
    with _removed_after(handles):
        output = model(input_ids=ids, use_cache=True, logits_to_keep=after, **cache_argument(model, cache))
    # An intervention at s leaves every earlier position untouched, so their keys and values are reused.
    cache.crop(-after)
    target = ids[:, s + 1]
    logit = output.logits[:, 0].float().gather(1, target[:, None]).squeeze(1)
    return CleanRun(target, logit, means, attn_out, layer_in, cache)


def ablate_hook(layer_means: torch.Tensor, heads: Sequence[int], layout: HeadLayout) -> Callable[[Any, tuple], tuple]:
    """Pre-hook for a one-position batch of rows (sample b, copy j): copy j gets head heads[j] mean-ablated."""
    index = torch.tensor(list(heads), device=layer_means.device)
    group = torch.arange(len(heads), device=layer_means.device)
    means = layer_means.view(-1, layout.num_heads, layout.head_dim)[:, index]  # [samples, copies, head_dim]

    def hook(module: Any, args: tuple) -> tuple:
        x = args[0].clone()
        view = x.view(-1, len(heads), layout.num_heads, layout.head_dim)
        view[:, group, index] = means.to(x.dtype)
        return (x,) + tuple(args[1:])

    return hook


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@torch.no_grad()
def head_effects(
    model: Any, batch: CopyBatch, layout: HeadLayout, options: LocateOptions, progress: Any = None
) -> torch.Tensor:
    """Δπ = π̃/π − 1 of every head for one batch.

    Only the scored position is recomputed, from a shared cache, and only from the ablated layer upward (the layers
    below it see no change); in `direct` propagation the later attention blocks, whose outputs are frozen, do not run;
    only the copied token's logit is computed.
    """
    modules = o_proj_modules(model, layout)
    clean = clean_run(model, batch, layout, options.mean_vector)
    s = batch.scored_position
    scored_ids = batch.input_ids[:, s : s + 1].to(clean.target.device)
    samples = len(scored_ids)
    per_chunk = max(1, options.max_rows // samples)
    repeated: dict[int, Any] = {}  # one widened cache per chunk size, rolled back after every forward
    effects = torch.zeros(layout.num_layers, layout.num_heads)
    for layer in range(layout.num_layers):
        for heads in _chunks(list(range(layout.num_heads)), per_chunk):
            copies = len(heads)
            if copies not in repeated:
                repeated[copies] = copy.deepcopy(clean.cache)
                repeated[copies].batch_repeat_interleave(copies)
            frozen = range(layer + 1, layout.num_layers) if options.propagation == "direct" else ()
            run = UpperRun(start=layer, layer_input=clean.layer_in[layer].repeat_interleave(copies, 0),
                           frozen={later: clean.attn_out[later] for later in frozen}, copies=copies,
                           targets=clean.target.repeat_interleave(copies))
            ablate = modules[layer].register_forward_pre_hook(ablate_hook(clean.means[layer], heads, layout))
            with _removed_after([ablate]), upper_part(model, layout, run) as target_logits:
                output = model(input_ids=scored_ids.repeat_interleave(copies, 0), use_cache=True,
                               **cache_argument(model, repeated[copies]))
            for updated in run.updated_cache_layers(layout.num_layers):
                repeated[copies].layers[updated].crop(-1)
            picked = target_logits(output.logits).view(samples, copies)
            effects[layer, heads] = (picked / clean.logit[:, None] - 1).mean(0).cpu()
        if progress is not None:
            progress.update(1)
    return effects


def locate_heads(
    model: Any, tokenizer: Any, layout: HeadLayout, options: LocateOptions = LocateOptions(), show_progress: bool = True
) -> LocateResult:
    """Score every head with Δπ averaged over the (samples, n) settings."""
    started = time.perf_counter()
    vocab = sampleable_ids(model.config.vocab_size, tokenizer, model.config)
    prefix = special_prefix(tokenizer)
    per_setting = []
    with tqdm(total=len(options.settings) * layout.num_layers, desc="locating heads", unit="layer",
              disable=not show_progress) as bar:
        for samples, n in options.settings:
            batch = copy_batch(vocab, samples, n, options.seed, "locate", prefix)
            per_setting.append(head_effects(model, batch, layout, options, bar))
    scores = torch.stack(per_setting).mean(0)
    return LocateResult(scores, per_setting, time.perf_counter() - started)
