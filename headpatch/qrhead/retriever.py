"""QRRetriever: score and rerank passages with a model's own query-focused retrieval heads."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from headpatch.architectures import head_layout
from headpatch.errors import HeadpatchError
from headpatch.heads import Head, check_heads, parse_head, parse_heads
from headpatch.loading import LoadedModel, load_model
from headpatch.qrhead.data import Document
from headpatch.qrhead.detect import all_heads
from headpatch.qrhead.prompt import CHAT_TEMPLATE, Prompt, document_text, prompt_layout, prompt_pair
from headpatch.qrhead.scoring import calibrated_token_scores_batch, head_set_scores
from headpatch.qrhead.yamlio import FULL_HEADS, read_yaml
from headpatch.record import PatchRecord, QRHeads
from headpatch.runtime import check_context, context_limit

DocInput = str | Mapping[str, Any] | Document
_TRUNCATION_SLACK = 4  # tokens per document kept free: re-tokenizing cut text can shift a boundary token


def as_documents(docs: Sequence[DocInput]) -> list[Document]:
    """Documents from strings, `{"paragraph_text"|"text", "title"?, "idx"|"id"?}` mappings or Documents."""
    documents = []
    for i, doc in enumerate(docs):
        if isinstance(doc, Document):
            documents.append(doc)
        elif isinstance(doc, str):
            documents.append(Document(str(i), None, doc))
        elif isinstance(doc, Mapping):
            text = doc.get("paragraph_text", doc.get("text"))
            if not isinstance(text, str):
                raise HeadpatchError(f"document {i} has no 'text' or 'paragraph_text' string")
            title = doc.get("title")
            documents.append(Document(str(doc.get("idx", doc.get("id", i))), None if title is None else str(title),
                                      text))
        else:
            raise HeadpatchError(f"document {i} is neither a string nor a mapping: {type(doc).__name__}")
    return documents


def _resolve_heads(model: Any, heads: str | Sequence[str | Head] | None) -> list[Head]:
    if heads is None or heads == FULL_HEADS:
        return all_heads(model)
    if isinstance(heads, str):
        resolved = parse_heads(heads)
    else:
        resolved = [parse_head(h) if isinstance(h, str) else (int(h[0]), int(h[1])) for h in heads]
    if not resolved:
        raise HeadpatchError("the head list is empty")
    check_heads(resolved, head_layout(model.config))
    return resolved


def shipped_qrhead(config: Any) -> QRHeads | None:
    """The QR part of the record a checkpoint's config ships under `headpatch`; None when it ships none."""
    section = getattr(config, "headpatch", None)
    if section is None:
        return None
    return PatchRecord.from_json(section, "the headpatch metadata in config.json").qrhead


def shipped_qr_heads(config: Any) -> tuple[str, ...]:
    """The QR heads a checkpoint's config ships under `headpatch.qrhead.heads`; empty when it ships none."""
    qrhead = shipped_qrhead(config)
    return qrhead.heads if qrhead is not None else ()


class QRRetriever:
    """Scores documents for a query by the calibrated attention of selected heads (QRHead; all heads = ICR)."""

    def __init__(self, model: Any, tokenizer: Any, heads: str | Sequence[str | Head] | None,
                 truncate: bool = False, layout: str = CHAT_TEMPLATE) -> None:
        if tokenizer is None:
            raise HeadpatchError("the retriever needs the model's tokenizer")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.heads = _resolve_heads(model, heads)
        self.truncate = truncate
        self.layout = prompt_layout(layout)

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: str = "float32", device: str = "cpu",
                        truncate: bool = False, layout: str | None = None) -> QRRetriever:
        """Load a checkpoint whose config.json holds `headpatch.qrhead.heads` (written by `headpatch export`); its
        prompts are framed as at detection unless `layout` says otherwise."""
        loaded = load_model(str(path), dtype, device)
        qrhead = shipped_qrhead(loaded.model.config)
        heads = qrhead.heads if qrhead is not None else ()
        if not heads:
            raise HeadpatchError(
                f"{path} has no QR heads in config.json (headpatch.qrhead.heads); run `headpatch qrhead detect` "
                "and export with --qrhead-data, or use QRRetriever.from_yaml / explicit heads"
            )
        # records written before layouts existed name none: they were detected on the chat template
        shipped = qrhead.detection.prompt_layout.get("layout", CHAT_TEMPLATE)
        return cls(loaded.model, loaded.tokenizer, heads, truncate, layout or shipped)

    @classmethod
    def from_yaml(cls, path: str | Path, model: LoadedModel | str | None = None, dtype: str = "float32",
                  device: str = "cpu", truncate: bool = False, layout: str = CHAT_TEMPLATE) -> QRRetriever:
        """Use a public QRHead YAML head set, on `model` (loaded or a name) or on its `model_name_or_path`; pass
        `layout="qrhead-llama3"` or `"qrhead-qwen2.5"` to score on the prompt the public lists were detected on."""
        head_set = read_yaml(path)
        if model is None:
            if head_set.model_name_or_path is None:
                raise HeadpatchError(f"{path} names no model_name_or_path; pass the model explicitly")
            model = head_set.model_name_or_path
        loaded = load_model(model, dtype, device) if isinstance(model, str) else model
        return cls(loaded.model, loaded.tokenizer, head_set.heads, truncate, layout)

    def _truncated(self, documents: list[Document], prompt: Prompt, limit: int, needed: int) -> list[Document]:
        """Documents cut to equal token allowances so that the prompt fits `limit`."""
        tokenizer = self.tokenizer
        overhead = needed - sum(end - start for start, end in prompt.doc_spans)
        allowance = (limit - overhead) // len(documents) - _TRUNCATION_SLACK
        cut = []
        for i, doc in enumerate(documents):
            header = len(tokenizer(document_text(i, Document(doc.idx, doc.title, ""), self.layout),
                                   add_special_tokens=False)
                         ["input_ids"])
            text_ids = tokenizer(doc.text, add_special_tokens=False)["input_ids"]
            if allowance - header < 1:
                raise HeadpatchError(f"{len(documents)} documents cannot fit the model's context of {limit} tokens")
            cut.append(Document(doc.idx, doc.title, tokenizer.decode(text_ids[: allowance - header])))
        return cut

    def _prompts(self, query: str, documents: list[Document]) -> tuple[Prompt, Prompt]:
        prompt, null = prompt_pair(self.tokenizer, query, documents, self.layout)
        limit = context_limit(self.model.config)
        needed = max(len(prompt.input_ids), len(null.input_ids))
        if limit is None or needed <= limit:
            return prompt, null
        if not self.truncate:
            check_context(self.model.config, needed, "query and documents",
                          "; pass fewer or shorter documents, or truncate=True (--truncate)")
        prompt, null = prompt_pair(self.tokenizer, query, self._truncated(documents, prompt, limit, needed),
                                   self.layout)
        if max(len(prompt.input_ids), len(null.input_ids)) > limit:
            raise HeadpatchError(f"the documents still exceed the model's context of {limit} tokens after truncation")
        return prompt, null

    def score(self, query: str, docs: Sequence[DocInput]) -> list[float]:
        """One score per document, in input order: higher means more relevant to `query`."""
        return self.score_many([query], [docs], batch_size=1, show_progress=False)[0]

    def rerank(self, query: str, docs: Sequence[DocInput], top_k: int | None = None) -> list[tuple[int, float]]:
        """(document index, score) pairs, best first, at most `top_k` of them."""
        scores = self.score(query, docs)
        ranked = sorted(enumerate(scores), key=lambda pair: -pair[1])
        return ranked if top_k is None else ranked[:top_k]

    def _score_batch(self, pairs: list[tuple[Prompt, Prompt]]) -> list[list[float]]:
        """Scores of several prompt pairs in one padded forward; halves the batch when the device runs out of memory."""
        try:
            token_scores = calibrated_token_scores_batch(
                self.model, [p for p, _ in pairs], [n for _, n in pairs], self.heads
            )
        except torch.OutOfMemoryError:
            if len(pairs) == 1:
                raise
            half = len(pairs) // 2
            return self._score_batch(pairs[:half]) + self._score_batch(pairs[half:])
        return [head_set_scores(scores, prompt.doc_spans) for scores, (prompt, _) in zip(token_scores, pairs)]

    def score_many(self, queries: Sequence[str], doc_sets: Sequence[Sequence[DocInput]], batch_size: int = 4,
                   show_progress: bool = True) -> list[list[float]]:
        """`score` for each (query, documents) pair, up to `batch_size` candidate sets per padded forward."""
        if len(queries) != len(doc_sets):
            raise HeadpatchError(f"{len(queries)} queries but {len(doc_sets)} document lists")
        if batch_size < 1:
            raise HeadpatchError(f"batch_size must be at least 1, got {batch_size}")
        pairs = []
        for query, docs in zip(queries, doc_sets):
            documents = as_documents(docs)
            if not documents:
                raise HeadpatchError("the document list is empty")
            pairs.append(self._prompts(query, documents))
        # batching prompts of similar length keeps padding small; results go back to input order
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0].input_ids))
        results: list[list[float]] = [[] for _ in pairs]
        with tqdm(total=len(pairs), desc="QRHead scoring", unit="query", disable=not show_progress) as bar:
            for begin in range(0, len(order), batch_size):
                chosen = order[begin:begin + batch_size]
                for i, scores in zip(chosen, self._score_batch([pairs[i] for i in chosen])):
                    results[i] = scores
                bar.update(len(chosen))
        return results
