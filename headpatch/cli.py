"""`headpatch` command line: a thin layer over the Python API."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer

from headpatch.console import progress_enabled
from headpatch.errors import HeadpatchError
from headpatch.evaluation.cli import eval_command
from headpatch.qrhead.cli import app as qrhead_app
from headpatch.qrhead.cli import rerank

app = typer.Typer(help="Make a causal LM read its context better and ship it as an ordinary checkpoint.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

ModelArg = typer.Argument(..., help="Hub id, local checkpoint directory, .gguf file, or the demo alias smollm2-135m.")
DtypeOpt = typer.Option("float32", help="dtype for locating and training: float32, bfloat16, float16 or auto.")
DeviceOpt = typer.Option("cpu", "--device", "--device-map",
                         help="torch device, or 'auto' for accelerate's placement across GPUs and CPU memory.")
RevisionOpt = typer.Option(None, help="Hub revision (branch, tag or commit).")
KOpt = typer.Option(10, "--k", help="number of suppression heads to patch.")
SettingsOpt = typer.Option("20x50,40x25,80x15,100x10", help="(samples)x(n) location settings, comma-separated.")
MeanOpt = typer.Option("batch", help="mean vector: batch (reference code) or sequence (paper text).")
PropagationOpt = typer.Option("direct", help="direct (path patching, reference code) or total effect.")
SeedOpt = typer.Option(0, help="seed for the proxy sequences.")
StepsOpt = typer.Option(60, help="training steps.")
BatchOpt = typer.Option(20, help="sequences per training step.")
NOpt = typer.Option(50, "--n", help="length n of the random half of training sequences.")
LrOpt = typer.Option(5e-3, help="AdamW learning rate.")
WarmupOpt = typer.Option(2, help="linear warm-up steps.")
Ia3Opt = typer.Option(None, help="also save the coefficients as a peft IA3 adapter in this directory.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="no progress bars.")
PushRepoOpt = typer.Option(None, help="after exporting, push the checkpoint to this Hub repo (e.g. me/llama-pear).")
PrivateOpt = typer.Option(False, help="create the Hub repo as private.")
CommitMessageOpt = typer.Option(None, help="commit message of the upload.")


def _locate_options(settings: str, mean_vector: str, propagation: str, seed: int) -> Any:
    from headpatch.pear.locate import LocateOptions
    from headpatch.recipe import parse_settings

    return LocateOptions(parse_settings(settings), mean_vector, propagation, seed)


def _train_options(steps: int, batch_size: int, n: int, lr: float, warmup: int, seed: int) -> Any:
    from headpatch.pear.train import TrainOptions

    return TrainOptions(steps=steps, batch_size=batch_size, n=n, lr=lr, warmup_steps=warmup, seed=seed)


def _heads_record(loaded: Any, heads: str) -> dict[str, Any]:
    """A record from a heads.json/patch.json file, or from a literal list such as '14-22,13-16'."""
    from headpatch.architectures import head_layout
    from headpatch.heads import parse_heads
    from headpatch.pipeline import given_heads_record
    from headpatch.record import check_fits, read_record

    if Path(heads).is_file() or heads.endswith(".json"):
        record = read_record(heads)
        check_fits(record, head_layout(loaded.model.config))
        return record
    return given_heads_record(loaded, parse_heads(heads))


def _save_ia3(layout: Any, base_model: str, record: dict[str, Any], directory: Optional[Path]) -> None:
    if directory is None:
        return
    from headpatch.pear.ia3 import save_ia3_adapter
    from headpatch.record import coefficients_of

    save_ia3_adapter(layout, coefficients_of(record), directory, base_model)
    typer.echo(f"wrote IA3 adapter to {directory}", err=True)


def _push(folder: Path, options: Any) -> None:
    from headpatch.io.hub import push_folder

    url = push_folder(folder, options)
    typer.echo(f"pushed {folder} to {options.repo_id}: {url}")


@app.command()
def locate(
    model: str = ModelArg,
    output: Path = typer.Option(..., "-o", "--output", help="where to write heads.json."),
    k: int = KOpt, settings: str = SettingsOpt, mean_vector: str = MeanOpt, propagation: str = PropagationOpt,
    seed: int = SeedOpt, dtype: str = DtypeOpt, device: str = DeviceOpt, revision: Optional[str] = RevisionOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Score every attention head with PEAR and keep the top K suppression heads."""
    from headpatch.loading import load_model
    from headpatch.pipeline import check_k, locate_step
    from headpatch.record import write_record

    show = progress_enabled(quiet)
    options = _locate_options(settings, mean_vector, propagation, seed)
    loaded = load_model(model, dtype, device, revision)
    check_k(loaded, k)
    record = locate_step(loaded, options, k, show_progress=show)
    write_record(record, output)
    typer.echo(f"top {k} suppression heads: {', '.join(record['pear']['heads'])} -> {output}")


@app.command()
def train(
    model: str = ModelArg,
    heads: str = typer.Option(..., help="heads.json from `locate`, or a list such as '14-22,13-16'."),
    output: Path = typer.Option(..., "-o", "--output", help="where to write patch.json."),
    k: Optional[int] = typer.Option(None, "--k", help="re-pick the top K from the located scores in --heads."),
    steps: int = StepsOpt, batch_size: int = BatchOpt, n: int = NOpt, lr: float = LrOpt, warmup: int = WarmupOpt,
    seed: int = SeedOpt, dtype: str = DtypeOpt, device: str = DeviceOpt, revision: Optional[str] = RevisionOpt,
    ia3: Optional[Path] = Ia3Opt, quiet: bool = QuietOpt,
) -> None:
    """Learn one coefficient per head with the model frozen."""
    from headpatch.architectures import head_layout
    from headpatch.loading import load_model
    from headpatch.pipeline import train_step
    from headpatch.record import with_top_k, write_record

    show = progress_enabled(quiet)
    options = _train_options(steps, batch_size, n, lr, warmup, seed)
    loaded = load_model(model, dtype, device, revision)
    record = _heads_record(loaded, heads)
    if k is not None:
        record = with_top_k(record, k)
    record = train_step(loaded, record, options, show_progress=show)
    write_record(record, output)
    _save_ia3(head_layout(loaded.model.config), loaded.source.base_model, record, ia3)
    training = record["pear"]["training"]
    typer.echo(
        f"held-out copy loss {training['heldout_before']['loss']:.4f} -> {training['heldout_after']['loss']:.4f}, "
        f"accuracy {training['heldout_before']['copy_accuracy']} -> {training['heldout_after']['copy_accuracy']}"
        f" -> {output}"
    )


@app.command()
def export(
    ctx: typer.Context,
    model: Optional[str] = typer.Argument(None, help=ModelArg.help + " Optional with --recipe.", show_default=False),
    output: Path = typer.Option(..., "-o", "--output", help="directory of the patched checkpoint."),
    recipe: Optional[Path] = typer.Option(None, help="recipes/X.yaml: model and settings; flags given here override."),
    dry_run: bool = typer.Option(False, help="with --recipe: check it and print the plan; load and write nothing."),
    patch: Optional[Path] = typer.Option(
        None, help="patch.json from `train`: fold it straight over the safetensors files, no model load."),
    heads: Optional[str] = typer.Option(None, help="heads.json or a head list: skip locating, train these."),
    overwrite: bool = typer.Option(False, help="replace a non-empty output directory."),
    k: int = KOpt, settings: str = SettingsOpt, mean_vector: str = MeanOpt, propagation: str = PropagationOpt,
    steps: int = StepsOpt, batch_size: int = BatchOpt, n: int = NOpt, lr: float = LrOpt, warmup: int = WarmupOpt,
    seed: int = SeedOpt, dtype: str = DtypeOpt, device: str = DeviceOpt, revision: Optional[str] = RevisionOpt,
    ia3: Optional[Path] = Ia3Opt, quiet: bool = QuietOpt,
    qrhead_data: Optional[str] = typer.Option(
        None, help="also detect QR heads: labelled QRHead JSON/JSONL, or 'builtin' for the built-in set."),
    qrhead_k: Optional[int] = typer.Option(None, help="QR heads to keep; default 16 (32 for models of 10B+)."),
    push_to_hub: Optional[str] = PushRepoOpt, private: bool = PrivateOpt,
    push_revision: Optional[str] = typer.Option(None, help="branch of the Hub repo to push to (created if needed)."),
    commit_message: Optional[str] = CommitMessageOpt,
    eval_setting: Optional[str] = typer.Option(
        None, "--eval", help="quick or full: evaluate the export against its source (report in OUT/eval/) and add "
                             "the summary table to the model card, before any push."),
) -> None:
    """Locate, train and fold in one go (or fold a given patch), writing a plain transformers checkpoint."""
    values = dict(ctx.params)
    if recipe is not None:
        from headpatch.plan import format_plan
        from headpatch.recipe import export_values, load_recipe

        loaded_recipe = load_recipe(recipe)
        # Compared by name: typer ships its own copy of click, so click's enum class is not the one returned here.
        given = {name for name in values if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"}
        values.update({name: value for name, value in export_values(loaded_recipe).items() if name not in given})
        if dry_run:
            typer.echo(format_plan(loaded_recipe, values, output))
            return
    elif dry_run:
        raise HeadpatchError("--dry-run needs --recipe: it prints the plan of a recipe")
    if values["model"] is None:
        raise HeadpatchError("give the MODEL to patch, or a --recipe that names it")
    for name in ("recipe", "dry_run"):
        values.pop(name)
    _export(**values)


def _export(
    model: str, output: Path, patch: Optional[Path], heads: Optional[str], overwrite: bool, k: int, settings: str,
    mean_vector: str, propagation: str, steps: int, batch_size: int, n: int, lr: float, warmup: int, seed: int,
    dtype: str, device: str, revision: Optional[str], ia3: Optional[Path], quiet: bool, qrhead_data: Optional[str],
    qrhead_k: Optional[int], push_to_hub: Optional[str], private: bool, push_revision: Optional[str],
    commit_message: Optional[str], eval_setting: Optional[str],
) -> None:
    from headpatch.architectures import head_layout
    from headpatch.io.atomic import check_output_dir
    from headpatch.io.hub import PushOptions
    from headpatch.loading import load_model
    from headpatch.pipeline import check_k, export_step, locate_step, qrhead_step, train_step
    from headpatch.qrhead.cli import BUILTIN_DOCS, detection_examples
    from headpatch.record import read_record

    show = progress_enabled(quiet)
    check_output_dir(output, overwrite)
    if eval_setting not in (None, "quick", "full"):
        raise HeadpatchError(f"--eval takes quick or full, not {eval_setting!r}")
    push = PushOptions(push_to_hub, private, push_revision, commit_message) if push_to_hub else None
    record = read_record(patch) if patch is not None else None
    qrhead_examples = None  # read before any model work, so bad data fails fast
    if qrhead_data is not None:
        data = None if qrhead_data == "builtin" else Path(qrhead_data)
        qrhead_examples = detection_examples(data, None, BUILTIN_DOCS, seed)
    if record is not None and qrhead_examples is None:
        out = _fold_patch(model, revision, record, output, overwrite, ia3, show)
    else:
        locate_options = _locate_options(settings, mean_vector, propagation, seed)
        train_options = _train_options(steps, batch_size, n, lr, warmup, seed)
        loaded = load_model(model, dtype, device, revision)
        if qrhead_k is not None:
            check_k(loaded, qrhead_k)  # before location and training, not after them
        if record is None:
            if heads is not None:
                record = _heads_record(loaded, heads)
            else:
                check_k(loaded, k)
                record = locate_step(loaded, locate_options, k, show_progress=show)
            record = train_step(loaded, record, train_options, show_progress=show)
        if qrhead_examples:
            record = qrhead_step(loaded, record, *qrhead_examples, qrhead_k, show_progress=show)
        _save_ia3(head_layout(loaded.model.config), loaded.source.base_model, record, ia3)
        out = export_step(loaded, record, output, overwrite, show_progress=show)
    typer.echo(f"exported {len(record['pear']['coefficients'])} patched heads -> {out}")
    if eval_setting is not None:
        _evaluate_export(out, model, revision, eval_setting == "quick", seed, dtype, device, show)
    if push is not None:
        _push(out, push)


def _evaluate_export(out: Path, model: str, revision: Optional[str], quick: bool, seed: int, dtype: str, device: str,
                     show: bool) -> None:
    """Evaluate the export against its source; the report goes into OUT/eval/ and its table into the model card."""
    from headpatch.evaluation import run_eval, summary_markdown, write_report
    from headpatch.io.export import add_to_card

    if revision is not None:
        typer.echo("--eval compares with the source at its default revision", err=True)
    results = run_eval(str(out), model, quick=quick, seed=seed, dtype=dtype, device=device, show_progress=show)
    report = write_report(results, out / "eval")
    add_to_card(out, "## Evaluation\n\n" + summary_markdown(results) + "\nFull report, figures and every number: "
                "[eval/report.md](eval/report.md).\n")
    typer.echo(f"evaluation report -> {report}")


def _fold_patch(model: str, revision: Optional[str], record: dict[str, Any], output: Path, overwrite: bool,
                ia3: Optional[Path], show: bool) -> Path:
    """The no-model-load path: fold a trained patch over the source's safetensors files."""
    from transformers import AutoConfig

    from headpatch.architectures import head_layout
    from headpatch.io.export import stream_export
    from headpatch.io.hub import checkpoint_dir
    from headpatch.loading import resolve_source

    source = resolve_source(model, revision)
    directory = checkpoint_dir(source)
    out = stream_export(directory, record, output, overwrite, show_progress=show)
    _save_ia3(head_layout(AutoConfig.from_pretrained(directory)), source.base_model, record, ia3)
    return out


@app.command()
def push(
    folder: Path = typer.Argument(..., help="an exported checkpoint directory."),
    repo_id: str = typer.Argument(..., help="Hub repo to create or update, e.g. me/llama-pear."),
    private: bool = PrivateOpt,
    revision: Optional[str] = typer.Option(None, help="branch to push to (created if needed)."),
    commit_message: Optional[str] = CommitMessageOpt,
) -> None:
    """Publish an export to the Hub (the token comes from HF_TOKEN or `hf auth login`, never from a flag)."""
    from headpatch.io.hub import PushOptions

    _push(folder, PushOptions(repo_id, private, revision, commit_message))


@app.command()
def inspect(
    checkpoint: str = typer.Argument(..., help="exported checkpoint directory or Hub id (only config.json is read)."),
    revision: Optional[str] = RevisionOpt,
    as_json: bool = typer.Option(False, "--json", help="print the raw headpatch metadata as JSON."),
) -> None:
    """Show the headpatch metadata of a checkpoint: heads, coefficients, QR heads."""
    import json

    from headpatch.io.hub import read_config
    from headpatch.io.summary import metadata_of, metadata_summary

    config = read_config(checkpoint, revision)
    if as_json:
        typer.echo(json.dumps(metadata_of(config, checkpoint), indent=2))
    else:
        typer.echo(metadata_summary(config, checkpoint))


@app.command()
def verify(
    checkpoint: Path = typer.Argument(..., help="exported checkpoint directory."),
    base: str = typer.Option(..., help="the source checkpoint: directory, Hub id or demo alias."),
    revision: Optional[str] = RevisionOpt, quiet: bool = QuietOpt,
) -> None:
    """Check tensor by tensor that only the recorded head columns changed, by exactly the recorded factors.

    Exit code 0: only the recorded patch differs; 1: unexpected differences (listed); 2: the inputs cannot be read."""
    from headpatch.io.hub import checkpoint_dir
    from headpatch.io.verify import verify_export
    from headpatch.loading import resolve_source

    result = verify_export(checkpoint, checkpoint_dir(resolve_source(base, revision)), progress_enabled(quiet))
    for problem in result.problems:
        typer.echo(f"UNEXPECTED {problem}")
    typer.echo(f"{result.tensors} tensors compared, {len(result.patched)} patched as recorded, "
               f"{len(result.problems)} unexpected differences")
    if not result.ok:
        raise typer.Exit(1)


def _print_versions(value: bool) -> None:
    if value:
        from headpatch._version import library_versions

        for name, found in library_versions().items():
            typer.echo(f"{name}: {found}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_versions,
                                 help="print the versions of headpatch, Python and the libraries it runs on."),
) -> None:
    """Make a causal LM read its context better and ship it as an ordinary checkpoint."""


app.add_typer(qrhead_app, name="qrhead")
app.command()(rerank)
app.command(name="eval")(eval_command)


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2."""
    try:
        app()
    except HeadpatchError as exc:
        typer.echo(f"headpatch: error: {exc}", err=True)
        sys.exit(2)
