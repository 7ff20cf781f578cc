"""Calls into transformers whose spelling changed inside the supported release range."""

from __future__ import annotations

import functools
import inspect
from typing import Any


@functools.cache
def _cache_keyword(model_class: type) -> str:
    # transformers 5.24 renamed forward's `past_key_values` to `cache` and deprecated the old name (removal: 5.40)
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def cache_argument(model: Any, cache: Any) -> dict[str, Any]:
    """The keyword argument that hands a key/value `cache` to `model`'s forward, in the installed release's name."""
    return {_cache_keyword(type(model)): cache}
