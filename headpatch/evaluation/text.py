"""Essay text for the evaluation: one part for contexts (needles, passages), the rest held out for perplexity."""

from __future__ import annotations

import re
from functools import lru_cache

from headpatch.essays import load_essays

HELD_OUT_EVERY = 4  # every 4th essay in name order (12 of 49, about 29k SmolLM2 tokens) is kept for perplexity
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


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


def sentences(text: str) -> list[str]:
    """Sentences of a text with its line breaks and runs of spaces collapsed."""
    return [s for s in _SENTENCE_END.split(" ".join(text.split())) if s]


def passages(texts: list[str], words: int) -> list[str]:
    """Whole-sentence chunks of about `words` words (a chunk ends with the sentence that reaches the count)."""
    chunks = []
    for text in texts:
        current: list[str] = []
        for sentence in sentences(text):
            current.append(sentence)
            if sum(len(s.split()) for s in current) >= words:
                chunks.append(" ".join(current))
                current = []
    return chunks
