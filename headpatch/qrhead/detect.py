"""QRHead detection: score every head by its calibrated attention to the gold documents, keep the top K."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from headpatch.architectures import head_layout
from headpatch.errors import HeadpatchError
from headpatch.heads import Head, ranked_heads
from headpatch.options import BUILTIN_DOCS, BUILTIN_EXAMPLES, QRHeadOptions
from headpatch.qrhead.builtin import builtin_examples
from headpatch.qrhead.data import Example, read_examples
from headpatch.qrhead.prompt import DEFAULT_LAYOUT, PromptLayout, prompt_pair
from headpatch.qrhead.scoring import calibrated_token_scores, masked_document_sums
from headpatch.runtime import check_context


@dataclass
class DetectionResult:
    """The QR score of every head (mean over examples of its score summed over gold documents)."""

    scores: torch.Tensor  # [layers, heads]
    examples: int
    seconds: float

    def ranked(self) -> list[Head]:
        """All heads, highest QR score first (ties keep layer-head order)."""
        return ranked_heads(self.scores)


def default_k(model: Any) -> int:
    """The paper's K: 16 heads for models under 10B parameters, 32 above (never more than the model has)."""
    parameters = sum(p.numel() for p in model.parameters())
    return QRHeadOptions().resolved_k(parameters, head_layout(model.config).total_heads)


def all_heads(model: Any) -> list[Head]:
    """Every (layer, query head) of the model, layer-major."""
    layout = head_layout(model.config)
    return [(layer, head) for layer in range(layout.num_layers) for head in range(layout.num_heads)]


def document_head_scores(model: Any, tokenizer: Any, example: Example, heads: Sequence[Head],
                         layout: PromptLayout = DEFAULT_LAYOUT) -> torch.Tensor:
    """Calibrated, outlier-masked score of each document under each head separately: [heads, documents]."""
    prompt, null = prompt_pair(tokenizer, example.question, example.documents, layout)
    check_context(model.config, max(len(prompt.input_ids), len(null.input_ids)), f"example {example.idx!r}")
    return masked_document_sums(calibrated_token_scores(model, prompt, null, heads), prompt.doc_spans)


def detect_heads(
    model: Any, tokenizer: Any, examples: Sequence[Example], show_progress: bool = False,
    layout: PromptLayout = DEFAULT_LAYOUT,
) -> DetectionResult:
    """Score every head of `model` on labelled examples framed by `layout` (an example without gold documents scores
    0, as upstream)."""
    if not examples:
        raise HeadpatchError("no detection examples")
    if tokenizer is None:
        raise HeadpatchError("QRHead detection needs the model's tokenizer")
    heads = all_heads(model)
    geometry = head_layout(model.config)
    began = time.perf_counter()
    total = torch.zeros(len(heads))
    for example in tqdm(examples, desc="QRHead detection", unit="example", disable=not show_progress):
        per_document = document_head_scores(model, tokenizer, example, heads, layout)
        total += per_document[:, example.gold_positions()].sum(dim=-1).cpu()
    scores = (total / len(examples)).view(geometry.num_layers, geometry.num_heads)
    return DetectionResult(scores, len(examples), time.perf_counter() - began)



def detection_examples(data: Path | None, examples: int | None = None, docs_per_example: int = BUILTIN_DOCS,
                       seed: int = 0) -> tuple[list[Example], str]:
    """The detection examples (a data file, or the built-in set when `data` is None) and the name recorded."""
    if examples is not None and examples < 1:
        raise HeadpatchError("--examples must be at least 1")
    if data is None:
        count = examples or BUILTIN_EXAMPLES
        name = f"built-in Paul Graham passages with a planted fact (split detect, seed {seed}, {docs_per_example} docs)"
        return builtin_examples(count, docs_per_example, "detect", seed), name
    loaded = read_examples(data)
    return (loaded[:examples] if examples else loaded), data.name
