"""`headpatch qrhead detect` and `headpatch rerank`: thin commands over the QRHead API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from headpatch.cli import flags
from headpatch.cli.console import progress_enabled
from headpatch.cli.flags import JOB, QRHEAD
from headpatch.errors import HeadpatchError
from headpatch.options import BUILTIN_DOCS, BUILTIN_EXAMPLES, PROMPT_LAYOUT_NAMES

app = typer.Typer(name="qrhead", help="Query-focused retrieval heads (QRHead): detect them (`headpatch rerank` ranks "
                                      "passages with them).",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.command()
def detect(
    model: flags.Model,
    output: flags.Output,
    data: Annotated[Optional[Path], typer.Option(
        help="labelled examples, QRHead JSON or JSONL; default: built-in set.")] = QRHEAD.data,
    k: flags.QrK = QRHEAD.k,
    examples: Annotated[Optional[int], typer.Option(
        help=f"use this many examples (built-in default {BUILTIN_EXAMPLES}).", show_default=False)] = None,
    docs_per_example: Annotated[int, typer.Option(help="passages per built-in example.")] = BUILTIN_DOCS,
    seed: flags.Seed = JOB.seed,
    yaml_out: Annotated[Optional[Path], typer.Option(
        "--yaml", help="also write the heads as a public QRHead YAML file.")] = None,
    prompt_layout: flags.PromptLayout = QRHEAD.layout,
    dtype: flags.Dtype = JOB.dtype, device: flags.Device = JOB.device, revision: flags.Revision = None,
    overwrite: flags.Overwrite = False, quiet: flags.Quiet = False,
) -> None:
    """Score every head on labelled examples and keep the top K query-focused retrieval heads."""
    from headpatch.io.atomic import check_output_file, overlap
    from headpatch.io.files import write_record
    from headpatch.loading import load_model, local_source
    from headpatch.pipeline import qr_k, qrhead_step
    from headpatch.qrhead.detect import detection_examples
    from headpatch.qrhead.prompt import prompt_layout as layout_named
    from headpatch.qrhead.yamlio import write_yaml

    show = progress_enabled(quiet)
    layout_named(prompt_layout)  # an unknown name fails before any model work
    source = local_source(model)
    for path in (output, yaml_out):
        if path is not None:
            check_output_file(path, overwrite, source)
    if yaml_out is not None and overlap(yaml_out, output):
        raise HeadpatchError(f"--yaml {yaml_out} and -o {output} overlap: give two separate files")
    chosen, name = detection_examples(data, examples, docs_per_example, seed)
    loaded = load_model(model, dtype, device, revision)
    k = qr_k(loaded, k)  # before the detection run, not after it
    record = qrhead_step(loaded, None, chosen, name, k, show_progress=show, layout=prompt_layout)
    write_record(record, output)
    if yaml_out is not None:
        write_yaml(yaml_out, record.qrhead.head_ids(), loaded.source.reference)
    typer.echo(f"top {k} QR heads: {', '.join(record.qrhead.heads)} -> {output}")


def _read_docs(path: Path) -> list[Any]:
    """Passages from JSONL: one JSON string, or an object with text/paragraph_text (title, id optional), per line."""
    from headpatch.io.files import read_text

    lines = read_text(path).splitlines()
    docs = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            docs.append(json.loads(line))
        except (ValueError, RecursionError) as exc:  # ValueError: JSONDecodeError, or int() refusing huge numbers
            raise HeadpatchError(f"{path}, line {number}: not valid JSON: {str(exc)[:200]}") from None
    if not docs:
        raise HeadpatchError(f"{path} holds no passages")
    return docs


def rerank(
    checkpoint: Annotated[str, typer.Argument(
        help="checkpoint whose config.json holds headpatch.qrhead.heads.", show_default=False)],
    query: Annotated[str, typer.Option(help="the query.", show_default=False)],
    docs: Annotated[Path, typer.Option(
        help="passages, JSONL: a string or {\"text\", \"title\"?, \"id\"?} per line.", show_default=False)],
    top_k: Annotated[int, typer.Option("--top-k", help="how many passages to print.")] = 5,
    truncate: Annotated[bool, typer.Option(help="cut passages to fit the model's context instead of failing.")] = False,
    prompt_layout: Annotated[Optional[str], typer.Option(
        "--prompt-layout", help=f"prompt frame ({', '.join(PROMPT_LAYOUT_NAMES)}); default: the one the checkpoint's "
                                "QR heads were detected with.", show_default=False)] = None,
    dtype: flags.Dtype = JOB.dtype, device: flags.Device = JOB.device, quiet: flags.Quiet = False,
) -> None:
    """Rank passages for a query with the checkpoint's own QR heads; prints rank, index, score and passage."""
    from headpatch.qrhead.retriever import QRRetriever, as_documents

    progress_enabled(quiet)
    if top_k < 1:
        raise HeadpatchError(f"--top-k must be at least 1, not {top_k}")
    documents = as_documents(_read_docs(docs))
    retriever = QRRetriever.from_pretrained(checkpoint, dtype, device, truncate, prompt_layout)
    for rank, (index, score) in enumerate(retriever.rerank(query, documents, top_k), 1):
        doc = documents[index]
        preview = " ".join(f"{doc.title or ''} {doc.text}".split())[:80]
        typer.echo(f"{rank}\t{index}\t{score:.6f}\t{preview}")
