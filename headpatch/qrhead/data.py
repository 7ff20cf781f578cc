"""Labelled retrieval examples in the public QRHead/ICR format (JSON list or JSONL), read and checked."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from headpatch.errors import HeadpatchError


@dataclass(frozen=True)
class Document:
    """One candidate passage; `title` is None when the passage has none (kept apart from an empty one, which the
    public implementation's prompt still shows)."""

    idx: str
    title: str | None
    text: str


@dataclass(frozen=True)
class Example:
    """A question, its candidate documents and the ids of the documents that answer it."""

    idx: str
    question: str
    documents: tuple[Document, ...]
    gold: tuple[str, ...]

    def gold_positions(self) -> list[int]:
        """Positions of the gold documents in `documents`."""
        return [i for i, doc in enumerate(self.documents) if doc.idx in self.gold]


def _text(record: dict[str, Any], key: str, where: str) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        raise HeadpatchError(f"{where}: {key!r} must be a string, got {value!r}")
    return value


def example_from_record(record: Any, where: str) -> Example:
    """Check one `{idx, question, paragraphs, gt_docs}` record and turn it into an Example."""
    if not isinstance(record, dict):
        raise HeadpatchError(f"{where}: expected an object with idx, question, paragraphs, gt_docs")
    where = f"{where} (idx {record.get('idx')!r})"
    question = _text(record, "question", where)
    paragraphs = record.get("paragraphs")
    if not isinstance(paragraphs, list) or not paragraphs:
        raise HeadpatchError(f"{where}: the document list 'paragraphs' is empty or missing")
    documents = []
    for paragraph in paragraphs:
        if not isinstance(paragraph, dict) or "idx" not in paragraph:
            raise HeadpatchError(f"{where}: every paragraph needs an 'idx' and a 'paragraph_text'")
        title = paragraph.get("title")
        if title is not None and not isinstance(title, str):
            raise HeadpatchError(f"{where}: paragraph {paragraph['idx']!r} has a non-string title")
        # ids are compared as strings: public files mix 0 and "0" between paragraphs and gt_docs
        documents.append(Document(str(paragraph["idx"]), title, _text(paragraph, "paragraph_text", where)))
    ids = [doc.idx for doc in documents]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise HeadpatchError(f"{where}: duplicate document ids {', '.join(duplicates)}")
    gold = record.get("gt_docs")
    if not isinstance(gold, list) or not gold:
        # detection scores the attention on the gold documents: an example without any would score nothing
        raise HeadpatchError(f"{where}: 'gt_docs' must be a non-empty list of document ids")
    gold_ids = tuple(str(g) for g in gold)
    unknown = [g for g in gold_ids if g not in ids]
    if unknown:
        raise HeadpatchError(f"{where}: gt_docs names documents that do not exist: {', '.join(unknown)}")
    return Example(str(record.get("idx", "")), question, tuple(documents), gold_ids)


def examples_from_records(records: Iterable[Any], source: str) -> list[Example]:
    """Check a sequence of records; an empty sequence is an error."""
    examples = [example_from_record(record, f"{source}, example {i}") for i, record in enumerate(records)]
    if not examples:
        raise HeadpatchError(f"{source} holds no examples")
    return examples


def read_examples(path: str | Path) -> list[Example]:
    """Read examples from a JSON list (`.json`) or one record per line (`.jsonl`)."""
    from headpatch.io.files import read_text

    path = Path(path)
    text = read_text(path)
    try:
        if path.suffix == ".jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            records = json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: JSONDecodeError, or int() refusing 5,000 digits
        kind = "JSONL" if path.suffix == ".jsonl" else "JSON"
        raise HeadpatchError(f"{path} is not valid {kind}: {str(exc)[:200]}") from None
    if not isinstance(records, list):
        raise HeadpatchError(f"{path}: expected a JSON list of examples")
    return examples_from_records(records, str(path))


def example_to_record(example: Example) -> dict[str, Any]:
    """The public JSON form of an example."""
    return {
        "idx": example.idx,
        "question": example.question,
        "paragraphs": [{"idx": d.idx, "title": d.title, "paragraph_text": d.text} for d in example.documents],
        "gt_docs": list(example.gold),
    }


def write_examples(examples: Iterable[Example], path: str | Path) -> Path:
    """Write examples as a JSON list, or as JSONL when the name ends in `.jsonl`."""
    path = Path(path)
    records = [example_to_record(example) for example in examples]
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    else:
        path.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    return path

