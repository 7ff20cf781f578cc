"""The public QRHead prompt layout, wrapped in the model's own chat template or in the public implementation's
hard-coded Llama-3 or Qwen-2.5 frame, with token spans."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from headpatch.errors import HeadpatchError
from headpatch.options import CHAT_TEMPLATE
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
class PromptLayout:
    """How documents and query are framed: by the tokenizer's chat template (`frame` None), or by fixed turn-marker
    text before and after the user content, tokenized with the tokenizer's own special tokens added."""

    name: str
    frame: tuple[str, str] | None  # (text before the user content, text after it)
    intro: str
    separator: str
    title_when_empty: bool  # a title of "" still gets its line ("[i] \ntext"); only a missing title is left out


# The public implementation (princeton-pli/QRHead, AttnBasedRetriever.get_prompt) hard-codes one frame per model
# family; its published head lists were detected on exactly these strings, spaces included.
PROMPT_LAYOUTS: dict[str, PromptLayout] = {
    CHAT_TEMPLATE: PromptLayout(CHAT_TEMPLATE, None, INTRO, SEPARATOR, title_when_empty=False),
    "qrhead-llama3": PromptLayout(
        "qrhead-llama3",
        ("<|start_header_id|>user<|end_header_id|>", "<|eot_id|><|start_header_id|>assistant<|end_header_id|>"),
        " " + INTRO, " \n\n", title_when_empty=True),
    "qrhead-qwen2.5": PromptLayout(
        "qrhead-qwen2.5", ("<|im_start|>user", "<|im_end|>\n<|im_start|>assistant"), " " + INTRO, "\n\n",
        title_when_empty=True),
}
DEFAULT_LAYOUT = PROMPT_LAYOUTS[CHAT_TEMPLATE]


def prompt_layout(name: str) -> PromptLayout:
    """The layout called `name`."""
    if name not in PROMPT_LAYOUTS:
        raise HeadpatchError(f"unknown prompt layout {name!r}; available: {', '.join(PROMPT_LAYOUTS)}")
    return PROMPT_LAYOUTS[name]


@dataclass(frozen=True)
class Prompt:
    """Token ids of one scoring prompt, the [start, end) token span of each document and where the query starts."""

    input_ids: list[int]
    doc_spans: list[tuple[int, int]]
    query_start: int


def document_text(index: int, doc: Document, layout: PromptLayout = DEFAULT_LAYOUT) -> str:
    """A document as the layout shows it: "[i] title\\ntext", without the title line when there is no title."""
    titled = doc.title is not None if layout.title_when_empty else bool(doc.title)
    body = f"{doc.title}\n{doc.text}" if titled else doc.text
    return f"[{index + 1}] {body}"


def user_message(question: str, documents: Sequence[Document],
                 layout: PromptLayout = DEFAULT_LAYOUT) -> tuple[str, list[tuple[int, int]], int]:
    """The user turn's text, the character span of each document in it and where the query span starts."""
    text, spans, separator = layout.intro, [], layout.separator
    for i, doc in enumerate(documents):
        text += separator
        piece = document_text(i, doc, layout)
        spans.append((len(text), len(text) + len(piece)))
        text += piece
    text += separator
    query_start = len(text)
    text += f"{INSTRUCTION}{separator}Query: {question}"
    return text, spans, query_start


def uses_chat_template(tokenizer: Any) -> bool:
    """Whether prompts go through the tokenizer's chat template (else the plain-text layout)."""
    return bool(getattr(tokenizer, "chat_template", None))


def _render(tokenizer: Any, content: str, layout: PromptLayout) -> tuple[str, int, bool]:
    """The full prompt text, where the user content starts in it, and whether to add special tokens."""
    if layout.frame is not None:
        before, after = layout.frame
        return before + content + after, len(before), True
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


def build_prompt(tokenizer: Any, question: str, documents: Sequence[Document],
                 layout: PromptLayout = DEFAULT_LAYOUT) -> Prompt:
    """Tokenize the scoring prompt for `question` over `documents` and map documents and query to token spans."""
    if not documents:
        raise HeadpatchError("the document list is empty")
    content, char_spans, query_char = user_message(question, documents, layout)
    text, offset, special = _render(tokenizer, content, layout)
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


def prompt_pair(tokenizer: Any, question: str, documents: Sequence[Document],
                layout: PromptLayout = DEFAULT_LAYOUT) -> tuple[Prompt, Prompt]:
    """The prompt and its "N/A" twin; they share every token before the query span."""
    prompt = build_prompt(tokenizer, question, documents, layout)
    null = build_prompt(tokenizer, NULL_QUERY, documents, layout)
    start = prompt.query_start
    if null.query_start != start or null.input_ids[:start] != prompt.input_ids[:start]:
        raise HeadpatchError("the tokenizer merges text across the start of the query span; cannot share the prefix")
    return prompt, null
