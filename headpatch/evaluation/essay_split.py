"""Which essays the evaluation shows the model: one part for contexts (needles, passages), the rest held out for
perplexity."""

from __future__ import annotations

from functools import lru_cache

from headpatch.essays import load_essays

HELD_OUT_EVERY = 4  # every 4th essay in name order (12 of 49, about 29k SmolLM2 tokens) is kept for perplexity


@lru_cache(maxsize=1)
def _partition() -> tuple[dict[str, str], dict[str, str]]:
    names = sorted(load_essays().items())
    held_out = {name for name, _ in names[HELD_OUT_EVERY - 1::HELD_OUT_EVERY]}
    context = {name: text for name, text in names if name not in held_out}
    return context, {name: text for name, text in names if name in held_out}


def context_essays() -> dict[str, str]:
    """Essays the reading tasks build their contexts from."""
    return dict(_partition()[0])


def heldout_essays() -> dict[str, str]:
    """Essays no other task shows the model, for perplexity."""
    return dict(_partition()[1])
