"""Fold per-head coefficients into the output-projection weights: exact, float32 arithmetic, dtype kept."""

from __future__ import annotations

from typing import Any

import torch

from headpatch.architectures import HeadLayout, o_proj_modules
from headpatch.heads import Head, check_heads, group_by_layer


def by_layer(coefficients: dict[Head, float]) -> dict[int, dict[int, float]]:
    """Group {(layer, head): c} as {layer: {head: c}}."""
    return {layer: {head: coefficients[layer, head] for head in heads}
            for layer, heads in group_by_layer(coefficients).items()}


def fold_weight(weight: torch.Tensor, layout: HeadLayout, head_coefficients: dict[int, float]) -> torch.Tensor:
    """A new weight whose head columns (rows for Conv1D) are multiplied by their coefficients."""
    folded = weight.detach().to(torch.float32).clone()
    for head, value in head_coefficients.items():
        cols = layout.head_columns(head)
        if layout.orientation == "conv1d":
            folded[cols, :] *= value
        else:
            folded[:, cols] *= value
    return folded.to(weight.dtype)


@torch.no_grad()
def fold_model(model: Any, layout: HeadLayout, coefficients: dict[Head, float]) -> list[str]:
    """Fold coefficients into a loaded model in place; return the names of the rewritten tensors."""
    check_heads(coefficients, layout)
    modules = o_proj_modules(model, layout)
    changed = []
    for layer, heads in sorted(by_layer(coefficients).items()):
        weight = modules[layer].weight
        weight.copy_(fold_weight(weight, layout, heads))
        changed.append(layout.o_proj_tensor(layer))
    return changed
