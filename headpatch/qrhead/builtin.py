"""A built-in detection set: Paul Graham essay passages, one of which carries a planted, made-up fact."""

from __future__ import annotations

import random
import re
from functools import lru_cache

from headpatch.errors import HeadpatchError
from headpatch.essays import load_essays
from headpatch.qrhead.data import Document, Example

SPLITS = ("detect", "eval")

# Made-up project names and code words: no essay mentions them, so only the planted sentence can answer.
_PROJECTS = (
    "Albatross", "Basilisk", "Cobalt", "Driftwood", "Ember", "Foxglove", "Glacier", "Heron", "Indigo", "Juniper",
    "Kestrel", "Lantern", "Marigold", "Nebula", "Obsidian", "Pelican", "Quartz", "Raven", "Saffron", "Tundra",
    "Umber", "Vortex", "Walrus", "Yarrow", "Zephyr", "Anvil", "Bramble", "Cinder", "Dune", "Falcon",
)
_CODE_WORDS = (
    "amber", "birch", "cedar", "delta", "ember", "fable", "garnet", "hazel", "ivory", "jasper", "kiwi", "lilac",
    "maple", "nectar", "olive", "pepper", "quill", "ruby", "sable", "topaz", "velvet", "willow", "xenon", "yucca",
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


def _sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(" ".join(text.split())) if s]


@lru_cache(maxsize=4)
def passages(split: str, passage_words: int = 60) -> tuple[Document, ...]:
    """Whole-sentence passages of about `passage_words` words; detect and eval use disjoint essays."""
    if split not in SPLITS:
        raise HeadpatchError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    essays = sorted(load_essays().items())
    # alternate essays between the splits so evaluation never sees a detection passage
    chosen = essays[SPLITS.index(split)::2]
    result = []
    for name, text in chosen:
        current: list[str] = []
        for sentence in _sentences(text):
            current.append(sentence)
            if sum(len(s.split()) for s in current) >= passage_words:
                result.append(Document(f"{name}-{len(result)}", name, " ".join(current)))
                current = []
    return tuple(result)


def _plant(passage: Document, fact: str, rng: random.Random) -> Document:
    sentences = _sentences(passage.text)
    at = rng.randint(0, len(sentences))
    return Document(passage.idx, passage.title, " ".join(sentences[:at] + [fact] + sentences[at:]))


def builtin_examples(count: int, docs_per_example: int = 10, split: str = "detect", seed: int = 0) -> list[Example]:
    """`count` seeded examples; each asks for a code planted in one of `docs_per_example` passages."""
    pool = passages(split)
    if count < 1 or not 2 <= docs_per_example <= len(pool):
        raise HeadpatchError(f"need count >= 1 and 2 <= docs_per_example <= {len(pool)}")
    # a string seed is hashed with SHA-512 by `random`, so the stream is stable across runs and platforms
    rng = random.Random(f"headpatch-qrhead-{split}-{seed}")
    examples = []
    for i in range(count):
        project = rng.choice(_PROJECTS)
        code = f"{rng.choice(_CODE_WORDS)}-{rng.randint(100, 999)}"
        chosen = rng.sample(pool, docs_per_example)
        gold = rng.randrange(docs_per_example)
        chosen[gold] = _plant(chosen[gold], f"The secret code of the {project} project is {code}.", rng)
        examples.append(Example(
            idx=f"builtin-{split}-{seed}-{i}",
            question=f"What is the secret code of the {project} project?",
            documents=tuple(chosen),
            gold=(chosen[gold].idx,),
        ))
    return examples
