"""The public QRHead YAML head-set files (`attn_head_set`, `model_name_or_path`), read and written."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import yaml

from headpatch.errors import HeadpatchError
from headpatch.heads import Head, format_head, parse_heads
from headpatch.io.atomic import write_text_atomic

FULL_HEADS = "full_heads"  # the public files' value for "every head" (the ICR baseline)


@dataclass(frozen=True)
class HeadSet:
    """A published head list; `heads` is None for the full set."""

    heads: list[Head] | None
    model_name_or_path: str | None = None


def read_yaml(path: str | Path) -> HeadSet:
    """Read a QRHead YAML file, with one-line errors for missing or malformed ones."""
    from headpatch.io.files import read_yaml as read_yaml_file

    data = read_yaml_file(path)
    if not isinstance(data, dict) or not isinstance(data.get("attn_head_set"), str):
        raise HeadpatchError(f"{path} has no attn_head_set string (e.g. attn_head_set: \"14-22,13-16\")")
    text = data["attn_head_set"].strip()
    heads = None if text == FULL_HEADS else parse_heads(text)
    if heads == []:
        raise HeadpatchError(f"{path}: attn_head_set is empty")
    model = data.get("model_name_or_path")
    return HeadSet(heads, str(model) if model is not None else None)


def write_yaml(path: str | Path, heads: Sequence[Head], model_name_or_path: str) -> Path:
    """Write heads (rank order) in the public format so QRHead's own retriever can use them."""
    path = Path(path)
    text = yaml.safe_dump(
        {"attn_head_set": ",".join(format_head(h) for h in heads), "model_name_or_path": model_name_or_path},
        sort_keys=False,
    )
    return write_text_atomic(path, text)
