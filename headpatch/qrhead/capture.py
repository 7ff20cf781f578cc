"""Query-span attention of selected heads, captured through transformers' AttentionInterface.

While a capture runs, the model's attention implementation is swapped for a registered wrapper that receives each
layer's query and key states after rotary embedding (and after any cache update), computes softmax probabilities
for the needed heads and query-span rows only, then delegates to the model's own eager or sdpa function. After the
last layer that holds a needed head the wrapper stops the forward pass, so later layers and the LM head never run.

Batches may be padded: an attention mask (1 = token, 0 = padding) hides padded keys through the model's own mask,
positions count only real tokens, and padded query rows are left out of the average.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from transformers import AttentionInterface, DynamicCache
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from headpatch.errors import HeadpatchError
from headpatch.heads import Head, group_by_layer
from headpatch.runtime import cache_argument, input_device


class _StopForward(Exception):
    """Raised after the last needed layer; never leaves this module."""


@dataclass
class _Capture:
    heads_by_layer: dict[int, list[int]]
    last_layer: int
    query_start: int  # absolute position of the first query-span row
    total_length: int  # absolute sequence length, cached prefix included
    new_tokens: torch.Tensor | None = None  # [B, new tokens] bool, False at padding; None when unpadded
    results: dict[int, torch.Tensor] = field(default_factory=dict)
    passed: set[int] = field(default_factory=set)  # layers whose attention went through the wrapper

    def missed_layers(self) -> list[int]:
        """Needed layers whose attention never reached the interface (their modeling code bypasses it)."""
        return sorted(({self.last_layer} | set(self.heads_by_layer)) - self.passed)


_ACTIVE: ContextVar[_Capture | None] = ContextVar("headpatch_qrhead_capture", default=None)


def _additive_mask(
    mask: torch.Tensor | None, first_row: int, query_len: int, key_len: int, device: Any
) -> torch.Tensor:
    """Additive mask for query rows [first_row, query_len); None means plain causal (sdpa skips building it)."""
    if mask is None:
        positions = torch.arange(first_row, query_len, device=device) + (key_len - query_len)
        allowed = torch.arange(key_len, device=device)[None, :] <= positions[:, None]
    else:
        allowed = mask[..., first_row:query_len, :]
        if allowed.dtype != torch.bool:  # eager masks are already additive
            return allowed.float()
    return torch.zeros(allowed.shape, device=device).masked_fill(~allowed, float("-inf"))


def mean_query_attention(
    query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, heads: Sequence[int], first_row: int,
    scaling: float, softcap: float | None = None, rows: torch.Tensor | None = None, sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax attention of `heads` for query rows from `first_row` on, averaged over those rows: [B, heads, keys].

    `rows` [B, query rows from `first_row`] (bool) marks the rows to average; None averages them all. `sinks` (one
    logit per query head, gpt-oss) join every row's softmax as an extra key that is then dropped, as the model does.
    """
    groups = query.shape[1] // key.shape[1]  # GQA: query head h reads key/value head h // groups
    q = query[:, list(heads), first_row:].float()
    k = key[:, [h // groups for h in heads]].float()
    scores = torch.matmul(q, k.transpose(-1, -2)) * scaling
    if softcap is not None:  # Gemma 2 caps logits before masking
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores + _additive_mask(mask, first_row, query.shape[2], key.shape[2], query.device)
    if sinks is not None:
        sink = sinks[list(heads)].float().to(scores.device).reshape(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
        probabilities = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
    else:
        probabilities = torch.softmax(scores, dim=-1)
    if rows is None:
        return probabilities.mean(dim=-2)
    # masked_fill, not a product: a padded row may be fully masked, and NaN * 0 is still NaN
    kept = probabilities.masked_fill(~rows[:, None, :, None], 0.0).sum(dim=-2)
    return kept / rows.sum(dim=-1).clamp(min=1)[:, None, None]


def _eager_of(module: Any) -> Callable:
    # each modeling file defines its own eager function (softcapping, sinks...); the model's eager path uses it
    function = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if function is None:
        raise HeadpatchError(f"{type(module).__name__} has no eager attention function to delegate to")
    return function


def _wrapper(delegate: str) -> Callable:
    def attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, scaling: float | None = None, **kwargs: Any) -> Any:
        capture = _ACTIVE.get()
        if scaling is None:
            scaling = query.shape[-1] ** -0.5
        if capture is not None:
            layer = module.layer_idx
            capture.passed.add(layer)
            heads = capture.heads_by_layer.get(layer)
            if heads:
                if key.shape[2] != capture.total_length:
                    raise HeadpatchError(
                        f"layer {layer} sees {key.shape[2]} of {capture.total_length} keys (a sliding-window "
                        "cache?); QRHead scoring needs every key"
                    )
                first_row = capture.query_start - (capture.total_length - query.shape[2])
                rows = None if capture.new_tokens is None else capture.new_tokens[:, first_row:].to(query.device)
                capture.results[layer] = mean_query_attention(
                    query, key, attention_mask, heads, first_row, scaling, kwargs.get("softcap"), rows,
                    kwargs.get("s_aux"),
                )
            if layer == capture.last_layer:
                raise _StopForward
        function = _eager_of(module) if delegate == "eager" else ALL_ATTENTION_FUNCTIONS[delegate]
        return function(module, query, key, value, attention_mask, scaling=scaling, **kwargs)

    return attention


def _capturing_implementation(original: str) -> str:
    """Register (once) the wrapper for the model's implementation; others (flash...) capture through sdpa."""
    delegate = "eager" if original == "eager" else "sdpa"
    name = f"headpatch_qrhead_{delegate}"
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, _wrapper(delegate))
        # masks are built by attention implementation name: give ours the delegate's mask format
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[delegate])
    return name


@contextmanager
def _capturing(model: Any, capture: _Capture) -> Iterator[None]:
    config = model.config
    original = config._attn_implementation
    token = _ACTIVE.set(capture)
    config._attn_implementation = _capturing_implementation(original)
    try:
        yield
    finally:
        config._attn_implementation = original
        _ACTIVE.reset(token)


def _padding_inputs(attention_mask: torch.Tensor | None, new_tokens: int, device: Any) -> dict[str, torch.Tensor]:
    """The mask and position ids of a padded batch: positions count real tokens only, so padding shifts nothing."""
    if attention_mask is None:
        return {}
    positions = (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)[:, -new_tokens:]
    return {"attention_mask": attention_mask.long().to(device), "position_ids": positions.to(device)}


def _run(model: Any, input_ids: torch.Tensor, capture: _Capture, cache: DynamicCache | None,
         attention_mask: torch.Tensor | None = None) -> None:
    device = input_device(model)
    padding = _padding_inputs(attention_mask, input_ids.shape[1], device)
    with torch.no_grad(), _capturing(model, capture):
        try:
            model(input_ids=input_ids.to(device), use_cache=cache is not None, **cache_argument(model, cache),
                  **padding)
        except _StopForward:
            pass
    missed = capture.missed_layers()
    if missed:
        raise HeadpatchError(
            f"the attention of layer {', '.join(map(str, missed))} of {type(model).__name__} does not go through "
            "transformers' attention interface; cannot capture it"
        )


def prefill(model: Any, input_ids: torch.Tensor, last_layer: int,
            attention_mask: torch.Tensor | None = None) -> DynamicCache:
    """Cache keys and values of `input_ids` [B, T] for layers 0..last_layer only (the pass stops there).

    `attention_mask` [B, T] (1 = token, 0 = padding) is needed when the batch is padded.
    """
    # every key of every layer: a sliding-window cache would keep only the last window, and the query span's rows
    # are scored against absolute positions (the model's mask still limits a sliding layer to its window)
    cache = DynamicCache()
    _run(model, input_ids, _Capture({}, last_layer, 0, input_ids.shape[1]), cache, attention_mask)
    return cache


def query_attention(
    model: Any, input_ids: torch.Tensor, heads: Sequence[Head], query_start: int, cache: DynamicCache | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of each head from query-span tokens to every position, averaged over the span: [B, heads, T].

    `input_ids` [B, t] continue `cache` (its length plus t is the full length T); `query_start` is absolute.
    A padded batch passes `attention_mask` [B, T] (1 = token, 0 = padding, cached part included); padded rows
    of the query span are left out of its average.
    """
    if not heads:
        raise HeadpatchError("no heads to capture")
    cached = cache.get_seq_length() if cache is not None else 0
    total = cached + input_ids.shape[1]
    if not cached <= query_start < total:
        raise HeadpatchError(f"query start {query_start} lies outside the new tokens [{cached}, {total})")
    if attention_mask is not None and attention_mask.shape != (input_ids.shape[0], total):
        raise HeadpatchError(f"attention mask of shape {tuple(attention_mask.shape)}; expected "
                             f"{(input_ids.shape[0], total)}")
    by_layer = group_by_layer(heads)
    new_tokens = None if attention_mask is None else attention_mask[:, cached:].bool()
    capture = _Capture(by_layer, max(by_layer), query_start, total, new_tokens)
    _run(model, input_ids, capture, cache, attention_mask)
    index = {layer: {h: i for i, h in enumerate(hs)} for layer, hs in by_layer.items()}
    return torch.stack([capture.results[layer][:, index[layer][head]] for layer, head in heads], dim=1)
