"""`headpatch eval`: the evaluation as a command (registered by headpatch.cli)."""

from __future__ import annotations

from pathlib import Path

import typer

from headpatch.evaluation.registry import TASK_NAMES, check_tasks
from headpatch.evaluation.report import RESULTS, summary_markdown, write_report
from headpatch.evaluation.run import run_eval
from headpatch.io.atomic import check_output_dir


def eval_command(
    model: str = typer.Argument(..., help="the model to evaluate: Hub id, checkpoint directory, .gguf file, or alias."),
    against: str | None = typer.Option(
        None, help="the model to compare with; default: the source named in the model's headpatch metadata if it "
                   "loads; 'none' evaluates the model alone."),
    output: Path = typer.Option(Path("report"), "-o", "--output", help="report directory."),
    tasks: str = typer.Option(",".join(TASK_NAMES), help="comma-separated tasks."),
    quick: bool = typer.Option(False, help="small settings (minutes on a laptop CPU) instead of the report's."),
    seed: int = typer.Option(0, help="seed of the evaluation inputs."),
    dtype: str = typer.Option("float32", help="float32, bfloat16, float16 or auto."),
    device: str = typer.Option("cpu", "--device", "--device-map",
                               help="torch device, or 'auto' for accelerate's placement across devices."),
    overwrite: bool = typer.Option(False, help="replace the output directory of an earlier report."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars."),
) -> None:
    """Compare a model with its base on copying, needle in a haystack, multi-document QA, perplexity and retrieval."""
    # imported here, not at the top: headpatch.cli imports this module to register the command
    from headpatch.cli.console import progress_enabled

    show = progress_enabled(quiet)
    names = check_tasks(tasks)
    check_output_dir(output, overwrite, marker=RESULTS)  # before any model work: a full run takes a while
    results = run_eval(model, against, names, quick, seed, dtype, device, show_progress=show)
    out = write_report(results, output, overwrite)
    typer.echo(summary_markdown(results))
    typer.echo(f"report -> {out}")
