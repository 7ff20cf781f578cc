"""Ranking metrics: Recall@k and MRR, with ties counted against the gold documents."""

from __future__ import annotations

import pytest

from headpatch.errors import HeadpatchError
from headpatch.qrhead.evaluate import ranking, recall_at_k, reciprocal_rank, summarize


def test_recall_and_reciprocal_rank():
    scores = [0.1, 0.9, 0.5, 0.3]
    assert ranking(scores, [0]) == [1, 2, 3, 0]
    assert recall_at_k(scores, [1]) == 1.0 and reciprocal_rank(scores, [1]) == 1.0
    assert recall_at_k(scores, [2]) == 0.0 and reciprocal_rank(scores, [2]) == 0.5
    assert reciprocal_rank(scores, [0]) == 0.25
    assert recall_at_k(scores, [2, 3], k=2) == 0.5 and reciprocal_rank(scores, [2, 3]) == 0.5
    assert recall_at_k(scores, [0, 1, 2], k=3) == pytest.approx(2 / 3)


def test_ties_count_against_gold():
    assert ranking([1.0, 1.0, 1.0], [0]) == [1, 2, 0]
    assert recall_at_k([1.0, 1.0], [0]) == 0.0 and reciprocal_rank([1.0, 1.0], [1]) == 0.5
    # all documents gold: ties among them do not matter
    assert recall_at_k([0.0, 0.0], [0, 1], k=2) == 1.0


def test_summary_and_bad_input():
    summary = summarize([[0.9, 0.1], [0.2, 0.8], [0.5, 0.6]], [[0], [1], [0]])
    assert summary == {"recall@1": pytest.approx(2 / 3), "mrr": pytest.approx((1 + 1 + 0.5) / 3)}
    with pytest.raises(HeadpatchError, match="without gold"):
        recall_at_k([1.0], [])
    with pytest.raises(HeadpatchError, match="outside"):
        reciprocal_rank([1.0, 2.0], [2])
    with pytest.raises(HeadpatchError, match="score lists"):
        summarize([[1.0]], [])
