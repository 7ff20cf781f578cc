"""Language-modelling figures used to check that a patch does no harm."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from headpatch.runtime import input_device


def _windows(tokenizer: Any, texts: Iterable[str], window: int, max_windows: int) -> torch.Tensor:
    """Non-overlapping windows of `window` tokens of the concatenated texts, at most `max_windows` of them."""
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    return ids[: (len(ids) // window) * window].view(-1, window)[:max_windows]


def _next_token_logits(model: Any, chunk: torch.Tensor) -> torch.Tensor:
    return model(input_ids=chunk.to(input_device(model)), use_cache=False).logits[:, :-1].float()


@torch.no_grad()
def window_losses(model: Any, tokenizer: Any, texts: Iterable[str], window: int = 512, max_windows: int = 64,
                  base: Any = None) -> tuple[list[float], list[float]]:
    """Per window of the concatenated texts: the mean next-token loss (nats) of `model`, the items perplexity is made
    of; and the mean KL(base ‖ model) of the next-token distributions (nats per token), how far a patch moves the
    predictions on ordinary text whatever the effect on perplexity (zeros without a `base`). One forward of `model`
    per window serves both."""
    losses: list[float] = []
    divergences: list[float] = []
    for chunk in _windows(tokenizer, texts, window, max_windows).split(8):
        logits = _next_token_logits(model, chunk)
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), chunk[:, 1:].to(logits.device),
                                                 reduction="none")
        losses += loss.mean(dim=-1).tolist()
        if base is None:
            divergences += [0.0] * len(chunk)
            continue
        reference = torch.log_softmax(_next_token_logits(base, chunk), dim=-1)
        changed = torch.log_softmax(logits, dim=-1).to(reference.device)
        divergences += (reference.exp() * (reference - changed)).sum(dim=-1).mean(dim=-1).tolist()
    return losses, divergences


def perplexity(losses: list[float]) -> float:
    """Token-level perplexity from per-window losses (every window has the same number of tokens)."""
    return math.exp(sum(losses) / len(losses))
