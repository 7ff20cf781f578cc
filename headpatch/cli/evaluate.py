"""`headpatch eval`: compare a model with its base on the evaluation tasks, same inputs, one run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from headpatch.cli import flags
from headpatch.cli.console import progress_enabled
from headpatch.cli.flags import JOB
from headpatch.errors import HeadpatchError
from headpatch.evaluation.registry import DEFAULT_TASKS, TASK_NAMES


def eval_command(
    model: Annotated[str, typer.Argument(
        help="the model to evaluate: Hub id, checkpoint directory, .gguf file, or alias.", show_default=False)],
    against: Annotated[Optional[str], typer.Option(
        help="the model to compare with; default: the source named in the model's headpatch metadata if it "
             "loads; 'none' evaluates the model alone.")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="report directory.")] = Path("report"),
    tasks: Annotated[str, typer.Option(help=f"comma-separated tasks, of {', '.join(TASK_NAMES)}.")] = ",".join(
        DEFAULT_TASKS),
    quick: Annotated[bool, typer.Option(
        help="small settings (minutes on a laptop CPU) instead of the report's.")] = False,
    seed: Annotated[int, typer.Option(help="seed of the evaluation inputs.")] = 0,
    dtype: flags.Dtype = JOB.dtype, device: flags.Device = JOB.device,
    overwrite: Annotated[bool, typer.Option(help="replace the output directory of an earlier report.")] = False,
    quiet: flags.Quiet = False,
) -> None:
    """Compare a model with its base on copying, needle in a haystack, multi-document QA, perplexity and retrieval.

    Generated answers are kept beside the report directory (.NAME.answers.jsonl) as they come, so the same command
    run again after an interruption answers only what is left; the file goes once the report is written.
    """
    from headpatch.evaluation.models import NO_REFERENCE
    from headpatch.evaluation.registry import check_tasks
    from headpatch.evaluation.report import RESULTS, summary_markdown, write_report
    from headpatch.evaluation.run import run_eval
    from headpatch.evaluation.saved_answers import AnswerLog, log_path
    from headpatch.io.atomic import check_apart, check_output_dir
    from headpatch.io.lock import claimed
    from headpatch.loading import local_source

    show = progress_enabled(quiet)
    names = check_tasks(tasks)
    for name in (model, *(_default_references(model) if against is None else [against])):
        source = local_source(name) if name != NO_REFERENCE else None
        if source is not None:  # a report never goes into a model it reads
            check_apart(output, source, "the evaluated checkpoint")
    check_output_dir(output, overwrite, marker=RESULTS)  # before any model work: a full run takes a while
    with claimed(output):
        check_output_dir(output, overwrite, marker=RESULTS)  # again: a run that held the lock may have written it
        log = AnswerLog(log_path(output))
        if log.resumed:
            typer.echo(f"resuming: {log.resumed} answers on file from an interrupted run ({log.path}); answers of "
                       "other models or settings are not reused", err=True)
        results = run_eval(model, against, names, quick, seed, dtype, device, show_progress=show, answer_log=log)
        out = write_report(results, output, overwrite)
        log.remove()
    typer.echo(summary_markdown(results))
    typer.echo(f"report -> {out}")


def _default_references(model: str) -> list[str]:
    """What `eval` compares a local export with when no --against is given: the models its config.json names (read
    as plain data, before anything loads); none for anything else or a config that cannot be read."""
    from headpatch.evaluation.models import metadata_names
    from headpatch.io.files import read_json
    from headpatch.loading import local_source

    source = local_source(model)
    if source is None or not (source / "config.json").is_file():
        return []
    try:
        config = read_json(source / "config.json")
    except HeadpatchError:  # loading it will say what is wrong
        return []
    return metadata_names(config.get("headpatch") if isinstance(config, dict) else None)
