"""Fold per-head coefficients into the output-projection weights: exact, float32 arithmetic, dtype kept."""

from __future__ import annotations

from typing import Any

import torch

from headpatch.architectures import HeadLayout, o_proj_modules
from headpatch.errors import HeadpatchError
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


def finite_fold(
    weight: torch.Tensor, layout: HeadLayout, head_coefficients: dict[int, float], name: str
) -> torch.Tensor:
    """fold_weight, refused when the result is not finite in the weight's dtype (1e30 is inf in float16): a
    checkpoint of inf/NaN weights loads without complaint and generates garbage."""
    folded = fold_weight(weight, layout, head_coefficients)
    if not torch.isfinite(folded).all():
        dtype = str(weight.dtype).removeprefix("torch.")
        if not torch.isfinite(weight).all():
            raise HeadpatchError(f"tensor {name} holds non-finite values already; refusing to patch it")
        factors = ", ".join(f"head {head} × {value:g}" for head, value in sorted(head_coefficients.items()))
        raise HeadpatchError(f"tensor {name} would not be finite in {dtype} after the patch ({factors}): "
                             "a coefficient is too large for the stored dtype")
    return folded


@torch.no_grad()
def fold_model(model: Any, layout: HeadLayout, coefficients: dict[Head, float]) -> list[str]:
    """Fold coefficients into a loaded model in place; return the names of the rewritten tensors. Every fold is
    computed and checked before the first weight changes, so a refused patch leaves the model as it was."""
    check_heads(coefficients, layout)
    modules = o_proj_modules(model, layout)
    folds = {layer: finite_fold(modules[layer].weight, layout, heads, layout.o_proj_tensor(layer))
             for layer, heads in sorted(by_layer(coefficients).items())}
    for layer, folded in folds.items():
        modules[layer].weight.copy_(folded)
    return [layout.o_proj_tensor(layer) for layer in folds]
