"""QRHead scores of documents: calibrated query-span attention per token, outlier-masked sums per document."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from headpatch.heads import Head
from headpatch.qrhead.capture import prefill, query_attention
from headpatch.qrhead.prompt import Prompt


def _padded(rows: Sequence[list[int]], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids padded to one width (with id 0: padding is masked, so any id does) and their 0/1 mask."""
    width = max(len(row) for row in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        at = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, at] = torch.tensor(row, dtype=torch.long)
        mask[i, at] = 1
    return ids, mask


def _unless_full(mask: torch.Tensor) -> torch.Tensor | None:
    # an unpadded batch runs without a mask, exactly as a single prompt would
    return None if bool(mask.all()) else mask


def calibrated_token_scores_batch(
    model: Any, prompts: Sequence[Prompt], null_prompts: Sequence[Prompt], heads: Sequence[Head]
) -> list[torch.Tensor]:
    """`calibrated_token_scores` of several prompt pairs in one padded batch: a [heads, prefix_i] tensor each.

    Prefixes are padded on the left, so every query span starts at the same column and both query tails
    (padded on the right) continue one shared cache; padding is masked and shifts no position.
    """
    starts = [prompt.query_start for prompt in prompts]
    width = max(starts)
    prefix_ids, prefix_mask = _padded([p.input_ids[:s] for p, s in zip(prompts, starts)], left=True)
    cache = prefill(model, prefix_ids, max(layer for layer, _ in heads), _unless_full(prefix_mask))

    def tail_attention(tails: Sequence[Prompt]) -> torch.Tensor:
        ids, mask = _padded([p.input_ids[s:] for p, s in zip(tails, starts)], left=False)
        full_mask = _unless_full(torch.cat([prefix_mask, mask], dim=1))
        return query_attention(model, ids, heads, width, cache, full_mask)[:, :, :width]

    real = tail_attention(prompts)
    cache.crop(width - cache.get_seq_length())  # back to the shared prefixes
    null = tail_attention(null_prompts)
    return [(real[i] - null[i])[:, width - start:] for i, start in enumerate(starts)]


def calibrated_token_scores(model: Any, prompt: Prompt, null_prompt: Prompt, heads: Sequence[Head]) -> torch.Tensor:
    """Per head and prefix token: attention from the query span minus that of the "N/A" query, [heads, prefix].

    The prefix (everything before the query span) is computed once; both query tails continue its cache.
    """
    return calibrated_token_scores_batch(model, [prompt], [null_prompt], heads)[0]


def masked_document_sums(token_scores: torch.Tensor, spans: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Per row and document: the sum of the document's token scores, leaving out those <= mean - 2 std: [rows, docs]."""
    sums = []
    for start, end in spans:
        scores = token_scores[:, start:end]
        if end - start < 2:  # a single token has no spread to call it an outlier by
            sums.append(scores.sum(dim=-1))
            continue
        threshold = scores.mean(dim=-1, keepdim=True) - 2 * scores.std(dim=-1, keepdim=True)
        sums.append(scores.masked_fill(scores <= threshold, 0.0).sum(dim=-1))
    return torch.stack(sums, dim=-1)


def head_set_scores(token_scores: torch.Tensor, spans: Sequence[tuple[int, int]]) -> list[float]:
    """One score per document from [heads, tokens] scores: heads summed per token, then each document masked."""
    # the order of the public retriever: sum over heads first, outlier-mask per document after
    return [float(s) for s in masked_document_sums(token_scores.sum(dim=0, keepdim=True), spans)[0]]
