"""QRHead scores of documents: calibrated query-span attention per token, outlier-masked sums per document."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from headpatch.heads import Head
from headpatch.qrhead.capture import prefill, query_attention
from headpatch.qrhead.prompt import Prompt


def calibrated_token_scores(model: Any, prompt: Prompt, null_prompt: Prompt, heads: Sequence[Head]) -> torch.Tensor:
    """Per head and prefix token: attention from the query span minus that of the "N/A" query, [heads, prefix].

    The prefix (everything before the query span) is computed once; both query tails continue its cache.
    """
    start = prompt.query_start
    ids = torch.tensor([prompt.input_ids])
    cache = prefill(model, ids[:, :start], max(layer for layer, _ in heads))
    tail = ids[:, start:]
    real = query_attention(model, tail, heads, start, cache)[0, :, :start]
    cache.crop(-tail.shape[1])  # back to the shared prefix
    null = query_attention(model, torch.tensor([null_prompt.input_ids[start:]]), heads, start, cache)[0, :, :start]
    return real - null


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


def context_limit(config: Any) -> int | None:
    """The longest sequence the model was built for, when its config says."""
    return getattr(config, "max_position_embeddings", None)
