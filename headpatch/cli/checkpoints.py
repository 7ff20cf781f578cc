"""`headpatch push`, `inspect`, `verify` and `card`: commands on an exported checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from headpatch.cli import flags
from headpatch.cli.console import progress_enabled
from headpatch.errors import printable


def push(
    folder: Annotated[Path, typer.Argument(help="an exported checkpoint directory.", show_default=False)],
    repo_id: Annotated[str, typer.Argument(help="Hub repo to create or update, e.g. me/llama-pear.",
                                           show_default=False)],
    private: flags.Private = False,
    revision: Annotated[Optional[str], typer.Option(help="branch to push to (created if needed).")] = None,
    commit_message: flags.CommitMessage = None,
) -> None:
    """Publish an export to the Hub (the token comes from HF_TOKEN or `hf auth login`, never from a flag)."""
    from headpatch.io.hub import PushOptions, push_folder

    url = push_folder(folder, PushOptions(repo_id, private, revision, commit_message))
    typer.echo(f"pushed {folder} to {repo_id}: {url}")


def inspect(
    checkpoint: Annotated[str, typer.Argument(
        help="exported checkpoint directory or Hub id (only config.json is read).", show_default=False)],
    revision: flags.Revision = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the raw headpatch metadata as JSON.")] = False,
) -> None:
    """Show the headpatch metadata of a checkpoint: heads, coefficients, QR heads."""
    from headpatch.io.hub import read_config
    from headpatch.io.summary import metadata_of, metadata_summary

    config = read_config(checkpoint, revision)
    if as_json:
        typer.echo(json.dumps(metadata_of(config, checkpoint), indent=2))
    else:
        typer.echo(metadata_summary(config, checkpoint))


def verify(
    checkpoint: Annotated[Path, typer.Argument(help="exported checkpoint directory, or patched .gguf file.",
                                               show_default=False)],
    base: Annotated[str, typer.Option(help="the source: directory, Hub id, .gguf file or demo alias.",
                                      show_default=False)],
    revision: flags.Revision = None, quiet: flags.Quiet = False,
) -> None:
    """Check tensor by tensor that only the recorded head columns changed, by exactly the recorded factors (for a
    GGUF: every key but the export's own, and every block's integers, unchanged; each patched tensor's deviation from
    base × coefficient printed).

    Exit code 0: only the recorded patch differs; 1: unexpected differences (listed); 2: the inputs cannot be read."""
    show = progress_enabled(quiet)
    if checkpoint.suffix.lower() == ".gguf":
        from headpatch.io.gguf_verify import verify_gguf
        from headpatch.loading import gguf_source

        result = verify_gguf(checkpoint, gguf_source(base), show)
    else:
        from headpatch.io.hub import checkpoint_dir
        from headpatch.io.verify import verify_export
        from headpatch.loading import resolve_source

        result = verify_export(checkpoint, checkpoint_dir(resolve_source(base, revision)), show)
    for note in result.notes:
        typer.echo(printable(note))
    for problem in result.problems:
        typer.echo(printable(f"UNEXPECTED {problem}"))  # tensor names come from the files
    typer.echo(f"{result.tensors} tensors compared, {len(result.patched)} patched as recorded, "
               f"{len(result.problems)} unexpected differences")
    if not result.ok:
        raise typer.Exit(1)


def card(
    folder: Annotated[Path, typer.Argument(help="an exported checkpoint directory.", show_default=False)],
    eval_report: Annotated[Path, typer.Option("--eval", help="a `headpatch eval` report directory (its results.json).",
                                              show_default=False)],
) -> None:
    """Add an evaluation made later to an export's model card: its table, and its figures in the card's model-index,
    which the Hub shows as evaluation results."""
    from headpatch.errors import HeadpatchError
    from headpatch.io.files import read_json
    from headpatch.pipeline import add_evaluation_to_card, check_report_matches

    results = read_json(eval_report / "results.json", "evaluation results")
    link = os.path.relpath(eval_report / "report.md", folder)
    try:
        check_report_matches(folder, results)
        add_evaluation_to_card(folder, results, link)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:  # a results.json not written by headpatch eval
        raise HeadpatchError(f"{eval_report / 'results.json'} is not a `headpatch eval` report ({exc!r})") from None
    typer.echo(f"added the evaluation in {eval_report} to {folder / 'README.md'}")
