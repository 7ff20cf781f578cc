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


# Bytes of float32 next-token scores held at once. One 512-token window of Gemma 3's 262k vocabulary is 0.5 GB, and
# the loss and KL need a few temporaries of that size: batching 8 windows whole took 24 GB and was killed.
LOGITS_BUDGET = 2**28


def _vocabulary(model: Any) -> int:
    return model.config.get_text_config().vocab_size


@torch.no_grad()
def window_losses(model: Any, tokenizer: Any, texts: Iterable[str], window: int = 512, max_windows: int = 64,
                  base: Any = None) -> tuple[list[float], list[float]]:
    """Per window of the concatenated texts: the mean next-token loss (nats) of `model`, the items perplexity is made
    of; and the mean KL(base ‖ model) of the next-token distributions (nats per token), how far a patch moves the
    predictions on ordinary text whatever the effect on perplexity (zeros without a `base`). One forward of `model`
    per window serves both; windows are batched, and scored in slices of positions, within LOGITS_BUDGET."""
    losses: list[float] = []
    divergences: list[float] = []
    windows = _windows(tokenizer, texts, window, max_windows)
    per_forward = max(1, LOGITS_BUDGET // (window * _vocabulary(model) * 4))
    for chunk in windows.split(per_forward):
        logits = _next_token_logits(model, chunk)
        reference = _next_token_logits(base, chunk) if base is not None else None
        targets = chunk[:, 1:].to(logits.device)
        span = max(1, LOGITS_BUDGET // (4 * len(chunk) * logits.shape[-1] * 4))  # four float32 temporaries
        loss, kl = torch.zeros(len(chunk), dtype=torch.float64), torch.zeros(len(chunk), dtype=torch.float64)
        for start in range(0, targets.shape[1], span):
            piece = slice(start, start + span)
            changed = torch.log_softmax(logits[:, piece], dim=-1)
            loss -= changed.gather(-1, targets[:, piece, None]).sum(dim=(1, 2)).double().cpu()
            if reference is not None:
                expected = torch.log_softmax(reference[:, piece], dim=-1).to(changed.device)
                kl += (expected.exp() * (expected - changed)).sum(dim=(1, 2)).double().cpu()
        losses += (loss / targets.shape[1]).tolist()
        divergences += (kl / targets.shape[1]).tolist()
    return losses, divergences


def perplexity(losses: list[float]) -> float:
    """Token-level perplexity from per-window losses (every window has the same number of tokens)."""
    return math.exp(sum(losses) / len(losses))
