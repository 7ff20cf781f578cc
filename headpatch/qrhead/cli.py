"""`headpatch qrhead detect` and `headpatch rerank`: thin commands over the QRHead API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from headpatch.console import progress_enabled
from headpatch.errors import HeadpatchError

app = typer.Typer(name="qrhead", help="Query-focused retrieval heads (QRHead): detect them, rerank with them.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

BUILTIN_EXAMPLES = 64
BUILTIN_DOCS = 10


def detection_examples(data: Optional[Path], examples: Optional[int], docs_per_example: int, seed: int) -> tuple[list[Any], str]:
    """The detection examples and the name they are recorded under."""
    from headpatch.qrhead.builtin import builtin_examples
    from headpatch.qrhead.data import read_examples

    if examples is not None and examples < 1:
        raise HeadpatchError("--examples must be at least 1")
    if data is None:
        count = examples or BUILTIN_EXAMPLES
        name = f"built-in Paul Graham passages with a planted fact (split detect, seed {seed}, {docs_per_example} docs)"
        return builtin_examples(count, docs_per_example, "detect", seed), name
    loaded = read_examples(data)
    return (loaded[:examples] if examples else loaded), data.name


@app.command()
def detect(
    model: str = typer.Argument(..., help="Hub id, local checkpoint directory, .gguf file, or smollm2-135m."),
    output: Path = typer.Option(..., "-o", "--output", help="where to write qrheads.json."),
    data: Optional[Path] = typer.Option(None, help="labelled examples, QRHead JSON or JSONL; default: built-in set."),
    k: Optional[int] = typer.Option(None, "--k", help="heads to keep; default 16 (32 for models of 10B+)."),
    examples: Optional[int] = typer.Option(None, help=f"use this many examples (built-in default {BUILTIN_EXAMPLES})."),
    docs_per_example: int = typer.Option(BUILTIN_DOCS, help="passages per built-in example."),
    seed: int = typer.Option(0, help="seed of the built-in set."),
    yaml_out: Optional[Path] = typer.Option(None, "--yaml", help="also write the heads as a public QRHead YAML file."),
    dtype: str = typer.Option("float32", help="float32, bfloat16, float16 or auto."),
    device: str = typer.Option("cpu", "--device", "--device-map", help="torch device, or 'auto' (accelerate)."),
    revision: Optional[str] = typer.Option(None, help="Hub revision."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars."),
) -> None:
    """Score every head on labelled examples and keep the top K query-focused retrieval heads."""
    from headpatch.architectures import head_layout
    from headpatch.loading import load_model
    from headpatch.pipeline import check_k
    from headpatch.qrhead.detect import default_k, detect_heads
    from headpatch.qrhead.metadata import qrhead_metadata
    from headpatch.qrhead.prompt import uses_chat_template
    from headpatch.qrhead.yamlio import write_yaml
    from headpatch.record import new_record, write_record

    show = progress_enabled(quiet)
    chosen, name = detection_examples(data, examples, docs_per_example, seed)
    loaded = load_model(model, dtype, device, revision)
    layout = head_layout(loaded.model.config)
    k = default_k(loaded.model) if k is None else k
    check_k(loaded, k)  # before the detection run, not after it
    result = detect_heads(loaded.model, loaded.tokenizer, chosen, show_progress=show)
    section = qrhead_metadata(result, k, name, uses_chat_template(loaded.tokenizer), all_scores=True)
    write_record({**new_record(model, loaded.source.base_model, layout), "qrhead": section}, output)
    if yaml_out is not None:
        write_yaml(yaml_out, result.ranked()[: len(section["heads"])], loaded.source.base_model)
    typer.echo(f"top {len(section['heads'])} QR heads: {', '.join(section['heads'])} -> {output}")


def _read_docs(path: Path) -> list[Any]:
    """Passages from JSONL: one JSON string, or an object with text/paragraph_text (title, id optional), per line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise HeadpatchError(f"cannot read {path}: {exc}") from exc
    docs = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            docs.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise HeadpatchError(f"{path}, line {number}: not valid JSON: {exc}") from exc
    if not docs:
        raise HeadpatchError(f"{path} holds no passages")
    return docs


def rerank(
    checkpoint: str = typer.Argument(..., help="checkpoint whose config.json holds headpatch.qrhead.heads."),
    query: str = typer.Option(..., help="the query."),
    docs: Path = typer.Option(..., help="passages, JSONL: a string or {\"text\", \"title\"?, \"id\"?} per line."),
    top_k: int = typer.Option(5, "--top-k", help="how many passages to print."),
    truncate: bool = typer.Option(False, help="cut passages to fit the model's context instead of failing."),
    dtype: str = typer.Option("float32", help="float32, bfloat16, float16 or auto."),
    device: str = typer.Option("cpu", "--device", "--device-map", help="torch device, or 'auto' (accelerate)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars."),
) -> None:
    """Rank passages for a query with the checkpoint's own QR heads; prints rank, index, score and passage."""
    from headpatch.qrhead.retriever import QRRetriever, as_documents

    progress_enabled(quiet)
    documents = as_documents(_read_docs(docs))
    retriever = QRRetriever.from_pretrained(checkpoint, dtype, device, truncate)
    for rank, (index, score) in enumerate(retriever.rerank(query, documents, top_k), 1):
        doc = documents[index]
        preview = " ".join(f"{doc.title} {doc.text}".split())[:80]
        typer.echo(f"{rank}\t{index}\t{score:.6f}\t{preview}")
