"""The shipped paraphrase retrieval set: its shape, its low question/gold word overlap, and no built-in content.

The built-in set's questions repeat a word of the gold passage (BM25 reaches 0.938 Recall@1 there); this held-out set
paraphrases its gold passages so that a lexical match cannot find them. No model is loaded here.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

import headpatch.qrhead
from headpatch.qrhead import builtin
from headpatch.qrhead.data import read_examples

PATH = Path(headpatch.qrhead.__file__).parent / "paraphrase.json"

_STOPWORD_TEXT = """
a about above after again against all almost also am an and any are as at be because been before being below
between both but by can could did do does doing down during each either else even ever every few for from further
had has have having he her here hers herself him himself his how however i if in into is it its itself just least
less let like may me might more most much must my myself neither no nor not now of off often on once one only or
other ought our ours ourselves out over own per quite rather same shall she should since so some such than that the
their theirs them themselves then there these they this those though through thus to too toward towards under until
up upon us very was we were what whatever when where whether which while who whom whose why will with within without
would yet you your yours yourself yourselves
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def content_words(text: str) -> set[str]:
    """Lowercase letter-only words, stopwords dropped, a plural's trailing "s" stripped ("rings" -> "ring")."""
    words = set()
    for word in re.findall(r"[a-z]+", text.lower()):
        if word in STOPWORDS:
            continue
        if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        if len(word) > 1 and word not in STOPWORDS:
            words.add(word)
    return words


@pytest.fixture(scope="module")
def examples():
    return read_examples(PATH)


def _gold(example):
    (position,) = example.gold_positions()
    return position, example.documents[position]


def test_shape(examples):
    assert len(examples) == 60
    assert len({e.idx for e in examples}) == 60
    for example in examples:
        assert len(example.documents) == 10, example.idx
        assert len(example.gold) == 1 and len(example.gold_positions()) == 1, example.idx


def test_gold_positions_cover_every_slot_evenly(examples):
    counts = Counter(_gold(e)[0] + 1 for e in examples)
    assert set(counts) == set(range(1, 11))
    assert max(counts.values()) - min(counts.values()) <= 1


def test_each_passage_is_gold_once(examples):
    golds = Counter(_gold(e)[1].text for e in examples)
    assert max(golds.values()) == 1


def test_questions_paraphrase_their_gold(examples):
    overlaps = {}
    for example in examples:
        _, gold = _gold(example)
        shared = content_words(example.question) & content_words(f"{gold.title} {gold.text}")
        assert len(shared) <= 1, (example.idx, sorted(shared))
        overlaps[example.idx] = len(shared)
    assert sum(overlaps.values()) / len(overlaps) < 0.5


def test_content_words_helper():
    assert content_words("What are the rings of Saturn made of?") == {"ring", "saturn", "made"}
    assert content_words("Does it glass") == {"glass"}


def test_nothing_from_the_builtin_set():
    # builtin_examples needs the essays package; its planted content is only these made-up names and code words
    text = PATH.read_text(encoding="utf-8").lower()
    words = set(re.findall(r"[a-z]+", text))
    planted = {w.lower() for w in builtin._PROJECTS + builtin._CODE_WORDS}
    assert planted and not planted & words, sorted(planted & words)
    assert "secret code" not in text


def test_the_loader_gives_the_first_examples_and_refuses_more_than_there_are():
    from headpatch.errors import HeadpatchError
    from headpatch.qrhead.paraphrase import paraphrase_examples

    assert [e.idx for e in paraphrase_examples(3)] == [e.idx for e in read_examples(PATH)[:3]]
    assert len(paraphrase_examples()) == 60
    with pytest.raises(HeadpatchError, match="has 60 examples; asked for 61"):
        paraphrase_examples(61)
