"""The public QRHead prompt layout, wrapped in the model's own chat template, with token spans."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from headpatch.errors import HeadpatchError
from headpatch.qrhead.data import Document

INTRO = "Here are some paragraphs:"
INSTRUCTION = "Please find information that are relevant to the following query in the paragraphs above."
SEPARATOR = "\n\n"
NULL_QUERY = "N/A"

LAYOUT = {
    "documents": "[i] title\\ntext, numbered from 1, separated by blank lines, after 'Here are some paragraphs:'",
    "instruction": INSTRUCTION,
    "query": "Query: <question>",
    "turn_markers": "the tokenizer's chat template (user turn, generation prompt); plain text without one",
    "query_tokens": "everything after the documents: instruction, 'Query: ...' and the assistant header",
    "null_query": NULL_QUERY,
}


@dataclass(frozen=True)
class Prompt:
    """Token ids of one scoring prompt, the [start, end) token span of each document and where the query starts."""

    input_ids: list[int]
    doc_spans: list[tuple[int, int]]
    query_start: int


def document_text(index: int, doc: Document) -> str:
    """A document as the public layout shows it: "[i] title\\ntext" (no title line when the title is empty)."""
    body = f"{doc.title}\n{doc.text}" if doc.title else doc.text
    return f"[{index + 1}] {body}"


def user_message(question: str, documents: Sequence[Document]) -> tuple[str, list[tuple[int, int]], int]:
    """The user turn's text, the character span of each document in it and where the query span starts."""
    text, spans = INTRO, []
    for i, doc in enumerate(documents):
        text += SEPARATOR
        piece = document_text(i, doc)
        spans.append((len(text), len(text) + len(piece)))
        text += piece
    text += SEPARATOR
    query_start = len(text)
    text += f"{INSTRUCTION}{SEPARATOR}Query: {question}"
    return text, spans, query_start


def uses_chat_template(tokenizer: Any) -> bool:
    """Whether prompts go through the tokenizer's chat template (else the plain-text layout)."""
    return bool(getattr(tokenizer, "chat_template", None))


def _render(tokenizer: Any, content: str) -> tuple[str, int, bool]:
    """The full prompt text, where the user content starts in it, and whether to add special tokens."""
    if not uses_chat_template(tokenizer):
        return content, 0, True
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )
    offset = text.find(content)
    if offset < 0:
        raise HeadpatchError("the tokenizer's chat template rewrites the user message; cannot locate the documents")
    # the rendered template already holds BOS and turn markers as text
    return text, offset, False


def build_prompt(tokenizer: Any, question: str, documents: Sequence[Document]) -> Prompt:
    """Tokenize the scoring prompt for `question` over `documents` and map documents and query to token spans."""
    if not documents:
        raise HeadpatchError("the document list is empty")
    content, char_spans, query_char = user_message(question, documents)
    text, offset, special = _render(tokenizer, content)
    try:
        encoded = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
    except NotImplementedError as exc:
        raise HeadpatchError("QRHead scoring needs a fast tokenizer (one that reports character offsets)") from exc
    ids, offsets = list(encoded["input_ids"]), list(encoded["offset_mapping"])

    def first_token_ending_after(char: int) -> int:
        # special tokens added by the tokenizer have empty (0, 0) offsets and belong to no span
        return next(i for i, (s, e) in enumerate(offsets) if e > s and e > char)

    doc_spans = []
    for start, end in char_spans:
        first = first_token_ending_after(offset + start)
        last = first_token_ending_after(offset + end - 1)
        doc_spans.append((first, last + 1))
    return Prompt(ids, doc_spans, first_token_ending_after(offset + query_char))


def prompt_pair(tokenizer: Any, question: str, documents: Sequence[Document]) -> tuple[Prompt, Prompt]:
    """The prompt and its "N/A" twin; they share every token before the query span."""
    prompt = build_prompt(tokenizer, question, documents)
    null = build_prompt(tokenizer, NULL_QUERY, documents)
    start = prompt.query_start
    if null.query_start != start or null.input_ids[:start] != prompt.input_ids[:start]:
        raise HeadpatchError("the tokenizer merges text across the start of the query span; cannot share the prefix")
    return prompt, null
