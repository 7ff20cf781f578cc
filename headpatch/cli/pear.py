"""`headpatch locate`, `train` and `export`: PEAR step by step, or the whole job in one go."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from headpatch.cli import flags
from headpatch.cli.console import progress_enabled
from headpatch.cli.flags import DEFAULT_LADDER, JOB, LOCATE, QRHEAD, TRAIN, TUNE
from headpatch.errors import HeadpatchError
from headpatch.options import (
    ExportJob,
    LocateOptions,
    TrainOptions,
    parse_ladder,
    parse_settings,
    settings_text,
    with_flags,
)
from headpatch.record import PatchRecord

DEFAULT_SETTINGS = settings_text(LOCATE.settings)


def locate(
    model: flags.Model, output: flags.Output, k: flags.K = LOCATE.k, settings: flags.Settings = DEFAULT_SETTINGS,
    mean_vector: flags.MeanVector = LOCATE.mean_vector, propagation: flags.Propagation = LOCATE.propagation,
    seed: flags.Seed = LOCATE.seed, dtype: flags.Dtype = JOB.dtype, device: flags.Device = JOB.device,
    revision: flags.Revision = None, overwrite: flags.Overwrite = False, quiet: flags.Quiet = False,
) -> None:
    """Score every attention head with PEAR and keep the top K suppression heads."""
    from headpatch.io.atomic import check_output_file
    from headpatch.io.files import write_record
    from headpatch.loading import load_model, local_source
    from headpatch.pipeline import locate_step

    show = progress_enabled(quiet)
    options = LocateOptions(k, parse_settings(settings), mean_vector, propagation, seed)
    check_output_file(output, overwrite, local_source(model))
    record = locate_step(load_model(model, dtype, device, revision), options, show_progress=show)
    write_record(record, output)
    typer.echo(f"top {k} suppression heads: {', '.join(record.pear.heads)} -> {output}")


def train(
    model: flags.Model,
    heads: Annotated[str, typer.Option(help="heads.json from `locate`, or a list such as '14-22,13-16'.",
                                       show_default=False)],
    output: flags.Output,
    k: Annotated[Optional[int], typer.Option("--k", help="re-pick the top K from the located scores in --heads.")]
    = None,
    steps: flags.Steps = TRAIN.steps, batch_size: flags.BatchSize = TRAIN.batch_size, n: flags.N = TRAIN.n,
    lr: flags.Lr = TRAIN.lr, warmup_steps: flags.WarmupSteps = TRAIN.warmup_steps, seed: flags.Seed = TRAIN.seed,
    dtype: flags.Dtype = JOB.dtype, device: flags.Device = JOB.device, revision: flags.Revision = None,
    ia3: flags.Ia3 = None, overwrite: flags.Overwrite = False, quiet: flags.Quiet = False,
) -> None:
    """Learn one coefficient per head with the model frozen."""
    from headpatch.architectures import head_layout
    from headpatch.io.atomic import check_output_file
    from headpatch.io.files import write_record
    from headpatch.io.hub import cached_checkpoint_dir
    from headpatch.loading import load_model, local_source
    from headpatch.pipeline import check_ia3_dir, heads_record, save_ia3, train_step

    show = progress_enabled(quiet)
    options = TrainOptions(steps=steps, batch_size=batch_size, n=n, lr=lr, warmup_steps=warmup_steps, seed=seed)
    source = local_source(model)
    check_output_file(output, overwrite, source)
    if ia3 is not None:  # refused before the training run, not after it
        check_ia3_dir(ia3, overwrite, source, output, "the patch file")
    loaded = load_model(model, dtype, device, revision)
    record = heads_record(loaded, heads)
    if k is not None:
        record = record.with_top_k(k)
    record = train_step(loaded, record, options, show_progress=show)
    write_record(record, output)
    if ia3 is not None:
        written = save_ia3(head_layout(loaded.model.config), record, ia3, loaded.source.reference, overwrite,
                           cached_checkpoint_dir(loaded.source))
        typer.echo(f"wrote IA3 adapter to {written}", err=True)
    before, after = record.pear.training.heldout_before, record.pear.training.heldout_after
    typer.echo(f"held-out copy loss {before.loss:.4f} -> {after.loss:.4f}, "
               f"accuracy {before.copy_accuracy} -> {after.copy_accuracy} -> {output}")


def tune(
    model: flags.Model, output: flags.Output,
    heads: Annotated[Optional[str], typer.Option(
        help="heads.json from `locate` (its scores rank the heads); default: locate first.")] = None,
    ladder: flags.Ladder = DEFAULT_LADDER, seed: flags.Seed = TUNE.seed, dtype: flags.Dtype = JOB.dtype,
    device: flags.Device = JOB.device, revision: flags.Revision = None, overwrite: flags.Overwrite = False,
    quiet: flags.Quiet = False,
) -> None:
    """Choose K and train to convergence: each K of the ladder trained until a held-out copy loss stops improving,
    the best one kept among those within the damage guard on generic text."""
    from headpatch.io.atomic import check_output_file
    from headpatch.io.files import write_record
    from headpatch.loading import load_model, local_source
    from headpatch.pipeline import heads_record, locate_step, tune_step

    show = progress_enabled(quiet)
    options = dataclasses.replace(TUNE, ladder=parse_ladder(ladder), seed=seed)
    check_output_file(output, overwrite, local_source(model))
    loaded = load_model(model, dtype, device, revision)
    located = heads_record(loaded, heads) if heads is not None else locate_step(
        loaded, dataclasses.replace(LOCATE, seed=seed), show_progress=show)
    record = tune_step(loaded, located, options, show_progress=show)
    write_record(record, output)
    typer.echo(tuning_table(record))
    typer.echo(f"-> {output}")


def tuning_table(record: PatchRecord) -> str:
    """The candidates of a tuned record as a plain-text table, and the reason for the choice."""
    tuning = record.pear.tuning
    lines = ["   K  steps  stopped by    held-out loss  accuracy  perplexity  KL        guard    whole guard text"]
    for c in tuning.candidates:
        lines.append(f"{c.k:4d}  {c.steps:5d}  {c.stopped:12s}  {c.heldout_loss:13.4f}  "
                     f"{c.heldout_accuracy:8.3f}  {c.perplexity_change:+10.3%}  {c.kl:8.5f}  "
                     f"{'within' if c.within_guard else 'outside':7s}  {c.guard_check_summary}")
    return "\n".join(lines + [f"base held-out loss {tuning.base_heldout_loss:.4f}", f"chosen: {tuning.reason}"])


FIXED_TRAINING_FLAGS = ("batch_size", "n", "lr", "warmup_steps")  # TrainOptions fields that TuneOptions has too


def _refuse_fixed_training_flags(given: set[str], job: ExportJob) -> None:
    """Tuning trains with its own settings, so a fixed-training flag given to a tuning export would be silently
    ignored; it is refused instead, naming the recipe key that does set it."""
    if job.tune is None:
        return
    ignored = [name for name in FIXED_TRAINING_FLAGS if name in given]
    if ignored:
        flag = "--" + ignored[0].replace("_", "-")
        raise HeadpatchError(f"{flag} sets fixed training (with --k or --steps); tuning, the default, takes "
                             f"tune.{ignored[0]} from a recipe (--recipe)")


def export(
    ctx: typer.Context,
    model: Annotated[Optional[str], typer.Argument(
        help="Hub id, local checkpoint directory, .gguf file, or a demo alias (smollm2-135m, gemma3-270m). "
             "Optional with --recipe.",
        show_default=False)] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="directory of the patched checkpoint.",
                                         show_default=False)] = ...,
    recipe: Annotated[Optional[Path], typer.Option(
        help="recipes/X.yaml: model and settings; flags given here override.")] = None,
    dry_run: Annotated[bool, typer.Option(
        help="with --recipe: check it and print the plan; load and write nothing.")] = False,
    patch: Annotated[Optional[Path], typer.Option(
        help="patch.json from `train`: fold it straight over the safetensors files, no model load.")] = None,
    heads: Annotated[Optional[str], typer.Option(
        help="heads.json or a head list: skip locating, train these.")] = None,
    overwrite: flags.Overwrite = False,
    k: flags.FixedK = None, settings: flags.Settings = DEFAULT_SETTINGS,
    mean_vector: flags.MeanVector = LOCATE.mean_vector, propagation: flags.Propagation = LOCATE.propagation,
    steps: flags.FixedSteps = None, ladder: flags.Ladder = DEFAULT_LADDER,
    batch_size: flags.BatchSize = TRAIN.batch_size, n: flags.N = TRAIN.n,
    lr: flags.Lr = TRAIN.lr, warmup_steps: flags.WarmupSteps = TRAIN.warmup_steps, seed: flags.Seed = LOCATE.seed,
    dtype: flags.Dtype = JOB.dtype, device: flags.Device = JOB.device, revision: flags.Revision = None,
    ia3: flags.Ia3 = None, quiet: flags.Quiet = False,
    qrhead_data: Annotated[Optional[str], typer.Option(
        help="also detect QR heads: labelled QRHead JSON/JSONL, or 'builtin' for the built-in set.")] = None,
    qrhead_k: flags.QrheadK = QRHEAD.k,
    qrhead_layout: flags.QrheadLayout = QRHEAD.layout,
    push_to_hub: Annotated[Optional[str], typer.Option(
        help="after exporting, push the checkpoint to this Hub repo (e.g. me/llama-pear).")] = None,
    private: flags.Private = False,
    push_revision: Annotated[Optional[str], typer.Option(
        help="branch of the Hub repo to push to (created if needed).")] = None,
    commit_message: flags.CommitMessage = None,
    eval: Annotated[Optional[str], typer.Option(
        "--eval", help="quick or full: evaluate the export against its source (report in OUT/eval/) and add the "
                       "summary table to the model card, before any push.")] = None,
    gguf: Annotated[bool, typer.Option(
        "--gguf", help="fold into the source GGUF (a .gguf MODEL or the demo alias) and write "
                       "OUT/<name>-pear[.QUANT].gguf: only its attn_output tensors change.")] = False,
) -> None:
    """Locate, train and fold in one go (or fold a given patch), writing a plain transformers checkpoint."""
    from headpatch.io.card import public_command
    from headpatch.pipeline import run_export

    flags_given = {name: value for name, value in ctx.params.items() if name not in ("recipe", "dry_run")}
    fixed = k is not None or steps is not None  # forcing K or the step count turns tuning off
    flags_given = {name: value for name, value in flags_given.items()
                   if name not in ("k", "steps") or value is not None}
    flags_given["settings"] = parse_settings(settings)
    flags_given["ladder"] = parse_ladder(ladder)
    if dry_run and recipe is None:
        raise HeadpatchError("--dry-run needs --recipe: it prints the plan of a recipe")
    # Compared by name: typer ships its own copy of click, so click's enum class is not the one returned here.
    given = {name for name in flags_given if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"}
    if recipe is not None:
        from headpatch.recipe import load_recipe

        loaded_recipe = load_recipe(recipe)
        job = with_flags(loaded_recipe.job(), {name: flags_given[name] for name in given})
    else:
        job = with_flags(ExportJob(), flags_given)
    if fixed or job.heads is not None or job.patch is not None:
        if fixed and "ladder" in given:
            raise HeadpatchError("--ladder chooses K by tuning and --k/--steps fix it: give one or the other")
        if k is not None and (job.heads is not None or job.patch is not None):
            raise HeadpatchError("--k picks how many located heads to patch; with --heads or --patch the heads are "
                                 "given (re-pick from a heads.json with `headpatch train --heads FILE --k K`)")
        job = dataclasses.replace(job, tune=None)
    _refuse_fixed_training_flags(given, job)
    if dry_run:
        from headpatch.plan import format_plan

        typer.echo(format_plan(loaded_recipe, job))
        return
    progress_enabled(job.quiet)
    # the command line as typed, when this runs as the `headpatch` console script (not inside another program)
    typed = public_command(sys.argv[1:]) if Path(sys.argv[0]).name == "headpatch" else None
    run_export(job, say=typer.echo, command=typed)
