"""Ranking quality of document scores against gold documents: Recall@k and (mean) reciprocal rank."""

from __future__ import annotations

from typing import Sequence

from headpatch.errors import HeadpatchError


def ranking(scores: Sequence[float], gold: Sequence[int]) -> list[int]:
    """Document positions, best score first; a gold document tied with others ranks after them (no lucky ties)."""
    if not gold:
        raise HeadpatchError("an example without gold documents cannot be evaluated")
    if not all(0 <= g < len(scores) for g in gold):
        raise HeadpatchError(f"gold positions {list(gold)} lie outside the {len(scores)} scored documents")
    golden = set(gold)
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i in golden))


def recall_at_k(scores: Sequence[float], gold: Sequence[int], k: int = 1) -> float:
    """The fraction of gold documents among the `k` best-scored ones."""
    return len(set(ranking(scores, gold)[:k]) & set(gold)) / len(set(gold))


def reciprocal_rank(scores: Sequence[float], gold: Sequence[int]) -> float:
    """1 / the rank (from 1) of the best-ranked gold document."""
    golden = set(gold)
    return 1.0 / next(rank for rank, i in enumerate(ranking(scores, gold), 1) if i in golden)


def summarize(score_lists: Sequence[Sequence[float]], golds: Sequence[Sequence[int]]) -> dict[str, float]:
    """Mean Recall@1 and MRR over examples."""
    if not score_lists or len(score_lists) != len(golds):
        raise HeadpatchError(f"{len(score_lists)} score lists for {len(golds)} examples")
    count = len(score_lists)
    return {
        "recall@1": sum(recall_at_k(s, g, 1) for s, g in zip(score_lists, golds)) / count,
        "mrr": sum(reciprocal_rank(s, g) for s, g in zip(score_lists, golds)) / count,
    }
