"""Head ids in the community's "layer-head" string form, parsed and checked against a model."""

from __future__ import annotations

import re
from typing import Iterable

import torch

from headpatch.architectures import HeadLayout
from headpatch.errors import HeadpatchError

Head = tuple[int, int]

_HEAD_RE = re.compile(r"^\s*(\d+)-(\d+)\s*$")


def parse_head(text: str) -> Head:
    """Parse one "layer-head" id (0-indexed query head)."""
    match = _HEAD_RE.match(str(text))
    if match is None:
        raise HeadpatchError(f"malformed head id {text!r}; expected 'layer-head', e.g. '14-22'")
    return int(match.group(1)), int(match.group(2))


def parse_heads(items: str | Iterable[str]) -> list[Head]:
    """Parse a comma-separated string or a list of "layer-head" ids, keeping order."""
    if isinstance(items, str):
        items = [part for part in items.split(",") if part.strip()]
    heads = [parse_head(item) for item in items]
    if len(set(heads)) != len(heads):
        raise HeadpatchError(f"duplicate head ids in {', '.join(format_head(h) for h in heads)}")
    return heads


def format_head(head: Head) -> str:
    """The "layer-head" string of a head."""
    return f"{head[0]}-{head[1]}"


def check_heads(heads: Iterable[Head], layout: HeadLayout) -> None:
    """Raise if any head lies outside the model's layers or query heads."""
    for layer, head in heads:
        if not (0 <= layer < layout.num_layers and 0 <= head < layout.num_heads):
            raise HeadpatchError(
                f"head {layer}-{head} is outside the model "
                f"({layout.num_layers} layers x {layout.num_heads} heads, 0-indexed)"
            )


def ranked_heads(scores: torch.Tensor) -> list[Head]:
    """Every head of a [layers, heads] score table, highest score first (ties keep layer-head order)."""
    order = torch.argsort(scores.flatten(), descending=True, stable=True)
    per_layer = scores.shape[1]
    return [(int(i) // per_layer, int(i) % per_layer) for i in order]
