"""The PEAR adapter at run time: one float32 scalar per chosen head, scaling that head's slice of the o_proj input."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch

from headpatch.architectures import HeadLayout, o_proj_modules
from headpatch.heads import Head, check_heads
from headpatch.runtime import input_device


class HeadScaling(torch.nn.Module):
    """Learnable per-head coefficients attached to a frozen model through o_proj pre-forward hooks."""

    def __init__(self, heads: Sequence[Head], layout: HeadLayout, init: Sequence[float] | None = None):
        super().__init__()
        check_heads(heads, layout)
        self.heads = list(heads)
        self.layout = layout
        values = torch.ones(len(self.heads)) if init is None else torch.tensor(list(init), dtype=torch.float32)
        # float32 even for bf16 models: steps of 5e-3 near 1.0 round away in bf16.
        self.coefficients = torch.nn.Parameter(values.float())
        self._handles: list[Any] = []

    def layer_scale(self, layer: int) -> torch.Tensor:
        """The [num_heads * head_dim] multiplier for one layer's o_proj input (ones for unpatched heads)."""
        picks = [i for i, (l, _) in enumerate(self.heads) if l == layer]
        scale = torch.ones(self.layout.num_heads, device=self.coefficients.device)
        index = torch.tensor([self.heads[i][1] for i in picks], device=scale.device, dtype=torch.long)
        scale = scale.index_put((index,), self.coefficients[picks])
        return scale.repeat_interleave(self.layout.head_dim)

    def attach(self, model: Any) -> "HeadScaling":
        """Start scaling the model's patched heads."""
        self.detach()
        modules = o_proj_modules(model, self.layout)
        self.to(input_device(model))
        for layer in sorted({layer for layer, _ in self.heads}):
            self._handles.append(modules[layer].register_forward_pre_hook(self._hook(layer)))
        return self

    def _hook(self, layer: int):
        def scale_input(module: Any, args: tuple) -> tuple:
            x = args[0]
            return (x * self.layer_scale(layer).to(device=x.device, dtype=x.dtype),) + tuple(args[1:])

        return scale_input

    def detach(self) -> None:
        """Remove the hooks; the model is back to its own weights."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def as_dict(self) -> dict[Head, float]:
        """Current coefficients keyed by head."""
        return {head: float(c) for head, c in zip(self.heads, self.coefficients.detach().cpu())}


@contextmanager
def scaled_heads(model: Any, layout: HeadLayout, coefficients: dict[Head, float]) -> Iterator[HeadScaling]:
    """Run the model with fixed per-head coefficients applied at run time."""
    scaling = HeadScaling(list(coefficients), layout, list(coefficients.values())).attach(model)
    try:
        yield scaling
    finally:
        scaling.detach()
