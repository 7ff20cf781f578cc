"""How headpatch calls a loaded transformers model: where its inputs go, and how a key/value cache is handed over."""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch

from headpatch.errors import HeadpatchError


def input_device(model: Any) -> torch.device:
    """The device token ids must be sent to: the input embedding's execution device."""
    embeddings = model.get_input_embeddings()
    # An offloaded embedding keeps its weight on the meta device; accelerate's hook names where it really runs.
    execution = getattr(getattr(embeddings, "_hf_hook", None), "execution_device", None)
    if execution is not None:
        return torch.device(execution)
    return embeddings.weight.device


@functools.cache
def _cache_keyword(model_class: type) -> str:
    # transformers 5.24 renamed forward's `past_key_values` to `cache` and deprecated the old name (removal: 5.40)
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def cache_argument(model: Any, cache: Any) -> dict[str, Any]:
    """The keyword argument that hands a key/value `cache` to `model`'s forward, in the installed release's name."""
    return {_cache_keyword(type(model)): cache}


def context_limit(config: Any) -> int | None:
    """The longest sequence the model was built for, when its config says."""
    return getattr(config, "max_position_embeddings", None)


def check_context(config: Any, needed: int, what: str, hint: str = "") -> None:
    """Raise when `what` needs more tokens than the model's context (`hint` says what to do about it)."""
    limit = context_limit(config)
    if limit is not None and needed > limit:
        raise HeadpatchError(f"{what} needs {needed} tokens, more than the model's context of {limit}{hint}")
