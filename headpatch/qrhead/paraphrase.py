"""A held-out retrieval set whose questions paraphrase their passage: 60 questions, each with one gold passage among
ten on the same theme, sharing no content word with it (BM25 ranks the gold first in 0.133 of them, chance 0.1).

The built-in set's questions repeat a word of their gold passage, which lexical matching exploits (BM25 Recall@1
0.938 there); this set asks whether attention finds a passage by meaning. The passages are original prose written
for headpatch on everyday science and history, with none of the built-in set's names, essays or code words.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from headpatch.errors import HeadpatchError
from headpatch.qrhead.data import Example, read_examples

PARAPHRASE_FILE = Path(__file__).with_name("paraphrase.json")


@lru_cache(maxsize=1)
def _all_examples() -> tuple[Example, ...]:
    return tuple(read_examples(PARAPHRASE_FILE))


def paraphrase_examples(count: int | None = None) -> list[Example]:
    """The first `count` examples of the paraphrase set (all 60 by default)."""
    examples = _all_examples()
    if count is not None and not 0 < count <= len(examples):
        raise HeadpatchError(f"the paraphrase set has {len(examples)} examples; asked for {count}")
    return list(examples[:count])
