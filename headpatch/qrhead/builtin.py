"""A built-in detection set: Paul Graham essay passages with planted, made-up facts; the question names one."""

from __future__ import annotations

import random
from functools import lru_cache

from headpatch import essays
from headpatch.errors import HeadpatchError
from headpatch.qrhead.data import Document, Example

SPLITS = ("detect", "eval")

# Made-up project names and code words: no essay mentions them, so only the planted sentences can answer.
_PROJECTS = (
    "Albatross", "Basilisk", "Cobalt", "Driftwood", "Ember", "Foxglove", "Glacier", "Heron", "Indigo", "Juniper",
    "Kestrel", "Lantern", "Marigold", "Nebula", "Obsidian", "Pelican", "Quartz", "Raven", "Saffron", "Tundra",
    "Umber", "Vortex", "Walrus", "Yarrow", "Zephyr", "Anvil", "Bramble", "Cinder", "Dune", "Falcon",
    "Gannet", "Hemlock", "Ibis", "Jackal", "Krypton", "Lichen", "Mistral", "Nettle", "Osprey", "Puffin",
)
_CODE_WORDS = (
    "amber", "birch", "cedar", "delta", "emerald", "fable", "garnet", "hazel", "ivory", "jasper", "kiwi", "lilac",
    "maple", "nectar", "olive", "pepper", "quill", "ruby", "sable", "topaz", "velvet", "willow", "xenon", "yucca",
)

def _split_index(split: str) -> int:
    if split not in SPLITS:
        raise HeadpatchError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    return SPLITS.index(split)


@lru_cache(maxsize=4)
def passages(split: str, passage_words: int = 60) -> tuple[Document, ...]:
    """Whole-sentence passages of about `passage_words` words; detect and eval use disjoint essays."""
    named = sorted(essays.load_essays().items())
    # alternate essays between the splits so evaluation never sees a detection passage
    chosen = named[_split_index(split)::2]
    result: list[Document] = []
    for name, text in chosen:
        for chunk in essays.passages([text], passage_words):
            result.append(Document(f"{name}-{len(result)}", name, chunk))
    return tuple(result)


def split_projects(split: str) -> tuple[str, ...]:
    """The project names a split plants; detect and eval use disjoint halves of the list."""
    return _PROJECTS[_split_index(split)::2]


def _fact(project: str, code: str) -> str:
    return f"The secret code of the {project} project is {code}."


def _plant(passage: Document, fact: str, rng: random.Random) -> Document:
    return Document(passage.idx, passage.title, essays.plant(passage.text, fact, rng))


def builtin_examples(count: int, docs_per_example: int = 10, split: str = "detect", seed: int = 0) -> list[Example]:
    """`count` seeded examples of `docs_per_example` passages, each planted with the code of a different project.

    The question asks for one project's code, so only the passage naming that project answers it: the others carry
    the same sentence about other projects and other codes (distractors a plain "find the code" head cannot tell apart).
    """
    pool, projects = passages(split), split_projects(split)
    most = min(len(pool), len(projects), len(_CODE_WORDS))
    if count < 1 or not 2 <= docs_per_example <= most:
        raise HeadpatchError(f"need count >= 1 and 2 <= docs_per_example <= {most}")
    # a string seed is hashed with SHA-512 by `random`, so the stream is stable across runs and platforms
    rng = random.Random(f"headpatch-qrhead-{split}-{seed}")
    examples = []
    for i in range(count):
        chosen = rng.sample(pool, docs_per_example)
        names = rng.sample(projects, docs_per_example)
        # distinct code words keep every planted code different within an example
        codes = [f"{word}-{rng.randint(100, 999)}" for word in rng.sample(_CODE_WORDS, docs_per_example)]
        planted = [_plant(doc, _fact(name, code), rng) for doc, name, code in zip(chosen, names, codes)]
        gold = rng.randrange(docs_per_example)
        examples.append(Example(
            idx=f"builtin-{split}-{seed}-{i}",
            question=f"What is the secret code of the {names[gold]} project?",
            documents=tuple(planted),
            gold=(planted[gold].idx,),
        ))
    return examples
