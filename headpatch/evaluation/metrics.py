"""Language-modelling figures used to check that a patch does no harm."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from headpatch.runtime import input_device


@torch.no_grad()
def perplexity(model: Any, tokenizer: Any, texts: Iterable[str], window: int = 512, max_windows: int = 64) -> float:
    """Token-level perplexity over non-overlapping windows of the concatenated texts."""
    device = input_device(model)
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    windows = ids[: (len(ids) // window) * window].view(-1, window)[:max_windows]
    total_loss, total_tokens = 0.0, 0
    for chunk in windows.split(8):
        chunk = chunk.to(device)
        logits = model(input_ids=chunk, use_cache=False).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum")
        total_loss += loss.item()
        total_tokens += chunk[:, 1:].numel()
    return math.exp(total_loss / total_tokens)
