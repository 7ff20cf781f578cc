"""The upper part of a model: the layers below a start layer skipped and their output fed in.

Location recomputes only the scored position of copies of a batch that differ from the clean run from one layer
upward. Everything below that layer is the clean run's, so the clean residual stream is fed in at the start layer; an
attention block whose output is held at its clean value need not run; and only the copied token's logit is read.
Tuning measures the same fixed inputs (its selection set, its guard text) again and again with heads scaled from
some layer up: the residual stream entering that layer never changes, so it is computed once (`LowerStates`). The
modules are swapped for the duration of one forward, so the model's own layer code (norms, residuals, soft-capping,
logit scaling, rotary embeddings, masks) still does the rest.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from headpatch.architectures import HeadLayout
from headpatch.runtime import input_device


def layer_hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    """The residual stream a decoder layer or its attention block receives, passed positionally or by keyword."""
    return args[0] if args else kwargs["hidden_states"]


class FrozenAttention(torch.nn.Module):
    """Stands in for an attention block whose output at the recomputed position is its clean value."""

    def __init__(self, output: torch.Tensor, copies: int):
        super().__init__()
        self.output = output  # [samples, hidden]
        self.copies = copies

    def forward(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        """Return the frozen output, one row per copy, in the layer's dtype and device; the inputs are not read."""
        hidden = layer_hidden(args, kwargs)
        frozen = self.output.repeat_interleave(self.copies, dim=0)[:, None]
        return frozen.to(device=hidden.device, dtype=hidden.dtype), None


class TargetLogit(torch.nn.Module):
    """An LM head that computes one logit per row, that of the row's target token, as [rows, positions, 1]."""

    def __init__(self, head: torch.nn.Module, targets: torch.Tensor):
        super().__init__()
        self.head = head
        self.targets = targets

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Dot products of the final hidden states with the targets' output embeddings (plus bias), float32 sums."""
        rows = self.head.weight[self.targets.to(self.head.weight.device)].to(hidden.device)
        logit = torch.einsum("rph,rh->rp", hidden.float(), rows.float())
        if getattr(self.head, "bias", None) is not None:
            logit = logit + self.head.bias[self.targets].float().to(hidden.device)[:, None]
        return logit.to(hidden.dtype)[..., None]


@dataclass(frozen=True)
class UpperRun:
    """What one upper-part forward replaces: its start layer and input, the frozen blocks, the logit targets."""

    start: int
    layer_input: torch.Tensor  # [rows, hidden] clean residual stream entering `start` at the position
    frozen: dict[int, torch.Tensor]  # layer -> [samples, hidden] clean attention output, for layers above `start`
    copies: int  # rows per sample
    targets: torch.Tensor  # [rows] token whose logit is read

    def updated_cache_layers(self, num_layers: int) -> list[int]:
        """The layers whose attention runs, so whose key/value cache grows by the recomputed position."""
        return [layer for layer in range(self.start, num_layers) if layer not in self.frozen]


def _set_child(model: Any, name: str, module: torch.nn.Module) -> torch.nn.Module:
    parent, _, child = name.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    old = getattr(owner, child)
    setattr(owner, child, module)
    return old


@contextmanager
def _swapped(model: Any, name: str, module: torch.nn.Module) -> Iterator[None]:
    old = _set_child(model, name, module)
    try:
        yield
    finally:
        _set_child(model, name, old)


@contextmanager
def _layer_types_from(config: Any, start: int) -> Iterator[None]:
    """Models with per-layer types (sliding or global attention; Gemma 3's two rotary bases) pick each layer's mask
    and rotary embedding by its index in the layer list: while that list starts at `start`, so must the types."""
    types = getattr(config, "layer_types", None)
    if not types or start == 0:
        yield
        return
    config.layer_types = list(types)[start:]
    try:
        yield
    finally:
        config.layer_types = types


def _head_name(model: Any) -> str | None:
    head = model.get_output_embeddings()
    return next((name for name, child in model.named_children() if child is head), None)


def _inject(layer_input: torch.Tensor):
    def hook(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        hidden = layer_hidden(args, kwargs)
        replaced = layer_input.to(device=hidden.device, dtype=hidden.dtype)
        if args:
            return (replaced,) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": replaced}

    return hook


@contextmanager
def from_layer(model: Any, layout: HeadLayout, start: int, layer_input: torch.Tensor) -> Iterator[None]:
    """While open, `model(...)` runs only layers `start` and up, with `layer_input` ([rows, positions, hidden], the
    positions of the forward's input ids) as the residual stream entering layer `start`; the embedding still runs, and
    is discarded, so that masks and positions come from the input ids as usual."""
    layers = model.get_submodule(layout.layers_name)
    with ExitStack() as stack:
        handle = layers[start].register_forward_pre_hook(_inject(layer_input), with_kwargs=True)
        stack.callback(handle.remove)
        stack.enter_context(_swapped(model, layout.layers_name, torch.nn.ModuleList(list(layers)[start:])))
        stack.enter_context(_layer_types_from(model.config, start))
        yield


class _Reached(Exception):
    """Ends a forward once the layer input it was run for is captured."""


@dataclass(frozen=True)
class LowerStates:
    """The residual stream entering layer `start` for a fixed batch of input ids, computed once: a forward of those
    ids that changes nothing below `start` can run from there (`feeding`)."""

    layout: HeadLayout
    start: int
    layer_input: torch.Tensor  # [rows, positions, hidden]

    def feeding(self, model: Any, rows: slice) -> Any:
        """A context in which `model(input_ids=ids[rows])` runs from layer `start`, fed these rows' states."""
        return from_layer(model, self.layout, self.start, self.layer_input[rows])


def fed_from(lower: LowerStates | None, model: Any, rows: slice) -> Any:
    """`lower.feeding(model, rows)`, or a context that changes nothing when there are no stored states."""
    return lower.feeding(model, rows) if lower is not None else nullcontext()


@torch.no_grad()
def lower_states(model: Any, layout: HeadLayout, ids: torch.Tensor, start: int, chunk: int) -> LowerStates | None:
    """The residual stream entering layer `start` for `ids` ([rows, positions]), `chunk` rows per forward, the layers
    from `start` up not run; None for layer 0, where nothing would be saved."""
    if start == 0:
        return None
    layers = model.get_submodule(layout.layers_name)
    captured: list[torch.Tensor] = []

    def capture(module: Any, args: tuple, kwargs: dict) -> None:
        captured.append(layer_hidden(args, kwargs).detach())
        raise _Reached

    handle = layers[start].register_forward_pre_hook(capture, with_kwargs=True)
    try:
        for first in range(0, len(ids), chunk):
            try:
                model(input_ids=ids[first:first + chunk].to(input_device(model)), use_cache=False)
            except _Reached:
                pass
    finally:
        handle.remove()
    return LowerStates(layout, start, torch.cat(captured))


def _gathered(targets: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda logits: logits[:, -1].float().gather(1, targets.to(logits.device)[:, None]).squeeze(1)


def _reduced(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1, 0].float()


@contextmanager
def upper_part(model: Any, layout: HeadLayout, run: UpperRun) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """While open, `model(...)` on one position per row computes only layers `run.start` and up, with the frozen
    attention blocks stubbed; the function it yields reads each row's target logit (float32, [rows]) from the
    forward's logits."""
    with ExitStack() as stack:
        for layer, output in run.frozen.items():
            stack.enter_context(_swapped(model, layout.attention_name(layer), FrozenAttention(output, run.copies)))
        stack.enter_context(from_layer(model, layout, run.start, run.layer_input[:, None]))
        head_name = _head_name(model)
        head = model.get_output_embeddings()
        # An offloaded head keeps its weight on the meta device; it then computes the whole vocabulary as usual.
        if head_name is None or head.weight.device.type == "meta":
            yield _gathered(run.targets)
            return
        stack.enter_context(_swapped(model, head_name, TargetLogit(head, run.targets)))
        yield _reduced
