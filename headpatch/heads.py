"""Head ids in the community's "layer-head" string form, parsed and checked against a model."""

from __future__ import annotations

import re
from typing import Any, Iterable, Protocol

from headpatch.errors import HeadpatchError

Head = tuple[int, int]

# ASCII digits only (\d would take ١ or １), no leading zeros; QRHead's score files spell a head "10_3", read the same
# and always written back as "10-3"
_HEAD_RE = re.compile(r"(0|[1-9][0-9]*)[-_](0|[1-9][0-9]*)", re.ASCII)


class HeadGrid(Protocol):
    """Anything that knows a model's layer and query-head counts (a HeadLayout, a record's Architecture)."""

    num_layers: int
    num_heads: int


def parse_head(text: str) -> Head:
    """Parse one "layer-head" id (0-indexed query head), or QRHead's "layer_head" spelling of it."""
    match = _HEAD_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise HeadpatchError(f"malformed head id {text!r}; expected 'layer-head', e.g. '14-22'")
    return int(match.group(1)), int(match.group(2))


def parse_heads(items: str | Iterable[str]) -> list[Head]:
    """Parse a comma-separated string or a list of "layer-head" ids, keeping order."""
    if isinstance(items, str):
        items = [part.strip() for part in items.split(",") if part.strip()]
    heads = [parse_head(item) for item in items]
    if len(set(heads)) != len(heads):
        raise HeadpatchError(f"duplicate head ids in {', '.join(format_head(h) for h in heads)}")
    return heads


def format_head(head: Head) -> str:
    """The "layer-head" string of a head."""
    return f"{head[0]}-{head[1]}"


def check_heads(heads: Iterable[Head], layout: HeadGrid) -> None:
    """Raise if any head lies outside the model's layers or query heads."""
    for layer, head in heads:
        if not (0 <= layer < layout.num_layers and 0 <= head < layout.num_heads):
            raise HeadpatchError(
                f"head {layer}-{head} is outside the model "
                f"({layout.num_layers} layers x {layout.num_heads} heads, 0-indexed)"
            )


def ranked_heads(scores: Any) -> list[Head]:
    """Every head of a [layers, heads] score tensor, highest score first (ties keep layer-head order)."""
    order = scores.flatten().argsort(descending=True, stable=True)
    per_layer = scores.shape[1]
    return [(int(i) // per_layer, int(i) % per_layer) for i in order]


def group_by_layer(heads: Iterable[Head]) -> dict[int, list[int]]:
    """{layer: [head, ...]} in the order the heads come."""
    grouped: dict[int, list[int]] = {}
    for layer, head in heads:
        grouped.setdefault(layer, []).append(head)
    return grouped
