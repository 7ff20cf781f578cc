"""The steps over a loaded model, each turning a compute result into a part of the patch record, and `run_export`.

Compute modules (headpatch.pear, headpatch.qrhead) return tensors and dataclasses of their own; only this module
turns them into record parts, so the record format depends on no compute code.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence

from headpatch._version import __version__
from headpatch.architectures import HeadLayout, head_layout
from headpatch.errors import HeadpatchError
from headpatch.heads import Head, check_heads, format_head, parse_heads
from headpatch.loading import LoadedModel
from headpatch.options import MEAN_VECTORS, PROPAGATIONS, ExportJob, LocateOptions, TrainOptions, TuneOptions
from headpatch.record import (
    Architecture,
    CopyFigures,
    GuardCheckFigures,
    Location,
    PatchRecord,
    Pear,
    QRHeads,
    Training,
    Tuning,
    TuningCandidate,
    check_k,
)

if TYPE_CHECKING:  # io.card imports huggingface_hub; the pipeline imports io only where a step needs it
    from headpatch.io.card import CardContext
    from headpatch.pear.tune import GuardCheck

LOCATION_METHOD = "PEAR mean ablation, delta_pi = logit_ablated / logit_clean - 1 of the copied token"


class Say(Protocol):
    """Where progress lines go: `err=True` for notes that belong on stderr (typer.echo fits)."""

    def __call__(self, message: str, err: bool = False) -> None: ...


def _print(message: str, err: bool = False) -> None:
    print(message, file=sys.stderr if err else sys.stdout)


def record_for(loaded: LoadedModel, pear: Pear | None = None, qrhead: QRHeads | None = None) -> PatchRecord:
    """A record naming this model, with the given parts."""
    return PatchRecord(headpatch_version=__version__, source=loaded.source.name, base_model=loaded.source.base_model,
                       architecture=Architecture.of(head_layout(loaded.model.config)), pear=pear, qrhead=qrhead)


def locate_step(loaded: LoadedModel, options: LocateOptions, show_progress: bool = True) -> PatchRecord:
    """Score every head and keep the top K as suppression heads."""
    from headpatch.pear.locate import locate_heads

    layout = head_layout(loaded.model.config)
    check_k(options.k, layout.total_heads)
    result = locate_heads(loaded.model, loaded.tokenizer, layout, options, show_progress)
    ranked = result.ranked()
    location = Location(
        method=LOCATION_METHOD, settings=options.settings, mean_vector=options.mean_vector,
        mean_vector_meaning=MEAN_VECTORS[options.mean_vector], propagation=options.propagation,
        propagation_meaning=PROPAGATIONS[options.propagation], seed=options.seed, special_tokens_excluded=True,
        k=options.k, seconds=round(result.seconds, 2),
        scores={format_head(head): round(float(result.scores[head]), 6) for head in ranked},
    )
    return record_for(loaded, Pear(heads=tuple(format_head(h) for h in ranked[:options.k]), location=location))


def given_heads_record(loaded: LoadedModel, heads: Sequence[Head]) -> PatchRecord:
    """A record for heads the user chose, e.g. a published list."""
    check_heads(heads, head_layout(loaded.model.config))
    location = Location(method="given by the user", k=len(heads))
    return record_for(loaded, Pear(heads=tuple(format_head(h) for h in heads), location=location))


def heads_record(loaded: LoadedModel, heads: str) -> PatchRecord:
    """A record from a heads.json/patch.json file, or from a literal list such as '14-22,13-16'."""
    from headpatch.io.files import read_record

    if Path(heads).is_file() or heads.endswith(".json"):
        record = read_record(heads)
        record.check_fits(head_layout(loaded.model.config))
        return record
    return given_heads_record(loaded, parse_heads(heads))


def _figures(evaluation: Any) -> CopyFigures:
    return CopyFigures(loss=round(evaluation.loss, 6),
                       copy_accuracy={str(n): round(a, 4) for n, a in evaluation.accuracy.items()})


def train_step(
    loaded: LoadedModel, record: PatchRecord, options: TrainOptions, show_progress: bool = True
) -> PatchRecord:
    """Learn one coefficient per located head."""
    from headpatch.pear.train import train_coefficients

    layout = head_layout(loaded.model.config)
    record.check_fits(layout)
    result = train_coefficients(loaded.model, loaded.tokenizer, layout, record.pear_heads(), options, show_progress)
    training = Training(
        **dataclasses.asdict(options),
        optimizer="AdamW, no weight decay, linear schedule with warm-up",
        loss="next-token cross-entropy on the copyable second half of proxy sequences",
        coefficient_dtype="float32",
        seconds=round(result.seconds, 2),
        train_loss_first=round(result.losses[0], 6),
        train_loss_last=round(result.losses[-1], 6),
        heldout_before=_figures(result.before),
        heldout_after=_figures(result.after),
    )
    coefficients = {format_head(head): round(value, 8) for head, value in result.coefficients.items()}
    return dataclasses.replace(record, pear=dataclasses.replace(record.pear, coefficients=coefficients,
                                                                training=training))


def _guard_check_figures(check: GuardCheck | None, options: TuneOptions) -> GuardCheckFigures | None:
    if check is None:
        return None
    figures = check.perplexity
    return GuardCheckFigures(windows=figures.items, perplexity_change=round(figures.change, 6),
                             perplexity_interval=(round(figures.low, 6), round(figures.high, 6)),
                             kl=round(check.kl, 6), within_guard=check.within(options))


TUNED_OPTIMIZER = "Adam, no weight decay, constant rate after linear warm-up, early stopping on held-out copy loss"


def tune_step(loaded: LoadedModel, record: PatchRecord, options: TuneOptions,
              show_progress: bool = True) -> PatchRecord:
    """Choose K from the ladder and train the chosen heads to convergence, from a located record's ranking; a model
    where no candidate helps within the damage guard is an error that says so."""
    from headpatch.pear.tune import GUARD_TEXT, chosen_training_options, tune

    layout = head_layout(loaded.model.config)
    record.check_fits(layout)
    scores = record.pear.location.scores if record.pear is not None else None
    if not scores:
        raise HeadpatchError("tuning needs located heads with scores (`headpatch locate`), not a given head list")
    ranked = record.with_top_k(len(scores)).pear_heads()
    result = tune(loaded.model, loaded.tokenizer, layout, ranked, options, show_progress)
    tuning = Tuning(
        ladder=options.ladder_for(len(ranked)), max_steps=options.max_steps, batch_size=options.batch_size,
        n=options.n, lr=options.lr, eval_every=options.eval_every, patience=options.patience,
        min_improvement=options.min_improvement,
        selection=f"{options.select_samples} held-out copy sequences of n={options.n} (their own seed stream)",
        guard_text=(f"{GUARD_TEXT}; {result.guard_windows} windows of 512 tokens spread over it during training, "
                    f"{result.check_windows} before a candidate is chosen"),
        max_perplexity_increase=options.max_perplexity_increase, max_kl=options.max_kl,
        base_heldout_loss=round(result.base.loss, 6), base_heldout_accuracy=round(result.base.mean_accuracy, 4),
        candidates=tuple(TuningCandidate(
            k=c.k, steps=c.steps, steps_run=c.steps_run, stopped=c.stopped,
            heldout_loss=round(c.selection.loss, 6), heldout_accuracy=round(c.selection.mean_accuracy, 4),
            loss_change_interval=(round(c.improvement[0], 6), round(c.improvement[1], 6)),
            perplexity_change=round(c.guard.perplexity_change, 6), kl=round(c.guard.kl, 6),
            within_guard=c.within_guard, guard_check=_guard_check_figures(c.check, options))
            for c in result.candidates),
        chosen_k=result.chosen.k if result.chosen is not None else None, reason=result.reason,
        seconds=round(result.seconds, 2), skipped=result.skipped,
    )
    if result.chosen is None:
        raise HeadpatchError(f"{result.reason}; force a patch with --k and --steps")
    chosen = result.chosen
    fixed = chosen_training_options(chosen, options)
    training = Training(
        **dataclasses.asdict(fixed), optimizer=TUNED_OPTIMIZER,
        loss="next-token cross-entropy on the copyable second half of proxy sequences", coefficient_dtype="float32",
        seconds=round(result.seconds, 2), train_loss_first=round(chosen.train_losses[0], 6),
        train_loss_last=round(chosen.train_losses[max(chosen.steps, 1) - 1], 6),
        heldout_before=_figures(result.before), heldout_after=_figures(result.after),
    )
    picked = record.with_top_k(chosen.k)
    coefficients = {format_head(head): round(value, 8) for head, value in chosen.coefficients.items()}
    return dataclasses.replace(picked, pear=dataclasses.replace(picked.pear, coefficients=coefficients,
                                                                training=training, tuning=tuning))


def qr_k(loaded: LoadedModel, k: int | None) -> int:
    """QR K as given (checked against the model) or the paper's default for its size."""
    from headpatch.qrhead.detect import default_k

    k = default_k(loaded.model) if k is None else k
    check_k(k, head_layout(loaded.model.config).total_heads)
    return k


def qrhead_step(
    loaded: LoadedModel, record: PatchRecord | None, examples: Sequence[Any], data_name: str, k: int,
    show_progress: bool = True, layout: str = "chat-template",
) -> PatchRecord:
    """Detect QR heads on the model as it will be shipped (its PEAR coefficients applied) and add them (to a new
    record when `record` is None)."""
    from headpatch.pear.scaling import scaled_heads
    from headpatch.qrhead.detect import detect_heads
    from headpatch.qrhead.metadata import qrhead_part
    from headpatch.qrhead.prompt import prompt_layout, uses_chat_template

    frame = prompt_layout(layout)
    coefficients = record.coefficients() if record is not None and record.trained else {}
    with scaled_heads(loaded.model, head_layout(loaded.model.config), coefficients):
        result = detect_heads(loaded.model, loaded.tokenizer, examples, show_progress, frame)
    part = qrhead_part(result, k, data_name, uses_chat_template(loaded.tokenizer), frame)
    return record_for(loaded, qrhead=part) if record is None else dataclasses.replace(record, qrhead=part)


def export_step(
    loaded: LoadedModel, record: PatchRecord, out: str | Path, overwrite: bool = False, show_progress: bool = True,
    say: Say = _print, context: CardContext | None = None,
) -> Path:
    """Fold the record over the source checkpoint's files (stored dtype and shards kept) and write the export;
    `context` names the Hub repo and the command in its card."""
    from headpatch.io.card import CardContext
    from headpatch.io.export import stream_export
    from headpatch.io.hub import checkpoint_dir

    return stream_export(checkpoint_dir(loaded.source), record, out, overwrite, show_progress,
                         warn=lambda message: say(message, err=True), context=context or CardContext())


IA3_MARKER = "adapter_config.json"  # every adapter written by save_ia3 holds it


def check_ia3_dir(directory: Path, overwrite: bool, source_dir: Path | None, output: Path | None = None,
                  output_name: str = "the export") -> None:
    """An adapter directory follows the export's output rules: apart from the source (and from the command's other
    `output`, called `output_name` in the message), empty unless `overwrite` finds an earlier adapter there."""
    from headpatch.io.atomic import check_apart, check_output_dir

    check_output_dir(directory, overwrite, source_dir, marker=IA3_MARKER)
    if output is not None:
        check_apart(directory, output, output_name)


def save_ia3(layout: HeadLayout, record: PatchRecord, directory: Path, base: str, overwrite: bool,
             source_dir: Path | None) -> Path:
    """Write the record's coefficients as a peft IA3 adapter, staged beside `directory` and renamed into place."""
    from headpatch.io.atomic import staged_output
    from headpatch.pear.ia3 import save_ia3_adapter

    check_ia3_dir(directory, overwrite, source_dir)
    directory = directory.resolve()
    with staged_output(directory, overwrite, marker=IA3_MARKER) as staging:
        save_ia3_adapter(layout, record.coefficients(), staging, base)
    return directory


def _save_ia3(layout: HeadLayout, base: str, record: PatchRecord, job: ExportJob, source_dir: Path | None,
              say: Say) -> None:
    if job.ia3 is None:
        return
    say(f"wrote IA3 adapter to {save_ia3(layout, record, job.ia3, base, job.export.overwrite, source_dir)}", err=True)


@dataclass(frozen=True)
class ExportOutcome:
    """What an export run wrote."""

    output: Path
    record: PatchRecord


def _fold_patch(job: ExportJob, record: PatchRecord, show: bool, say: Say, context: CardContext) -> Path:
    """The no-model-load path: fold a trained patch over the source's safetensors files."""
    from headpatch.io.checkpoint import built_config
    from headpatch.io.export import stream_export
    from headpatch.io.hub import checkpoint_dir
    from headpatch.loading import resolve_source

    source = resolve_source(job.model, job.revision)
    directory = checkpoint_dir(source)
    if job.ia3 is not None:  # refused before the export is written, not after
        check_ia3_dir(job.ia3, job.export.overwrite, directory)
    out = stream_export(directory, record, job.export.output, job.export.overwrite, show_progress=show,
                        warn=lambda message: say(message, err=True), context=context)
    _save_ia3(head_layout(built_config(directory)), source.reference, record, job, directory, say)
    return out


def _fold_gguf(job: ExportJob, gguf: Path, record: PatchRecord, show: bool, say: Say, context: CardContext) -> Path:
    """Fold the record into the source GGUF; returns the patched file (its folder is the export)."""
    from headpatch.io.gguf_export import gguf_export

    return gguf_export(gguf, record, job.export.output, job.export.overwrite, show_progress=show,
                       warn=lambda message: say(message, err=True), context=context)


def _computed_record(job: ExportJob, loaded: LoadedModel, record: PatchRecord | None, qr_examples: Any,
                     show: bool) -> PatchRecord:
    """Locate (or take the given heads), train, and detect QR heads, as the job asks."""
    k = qr_k(loaded, job.qrhead.k) if qr_examples is not None else None  # before location, not after it
    if record is None:
        if job.heads is not None:
            record = train_step(loaded, heads_record(loaded, job.heads), job.train, show_progress=show)
        elif job.tune is not None:
            record = tune_step(loaded, locate_step(loaded, job.locate, show_progress=show), job.tune, show)
        else:
            record = train_step(loaded, locate_step(loaded, job.locate, show_progress=show), job.train, show)
    if qr_examples is not None:
        record = qrhead_step(loaded, record, *qr_examples, k, show_progress=show, layout=job.qrhead.layout)
    return record


def run_export(job: ExportJob, say: Say = _print, command: str | None = None) -> ExportOutcome:
    """Run one export job: locate, train, detect, fold, then evaluate and push as asked. `say` gets progress lines;
    `command`, the command line as io.card.public_command gives it, goes into the card."""
    from headpatch.io.atomic import check_output_dir
    from headpatch.io.card import CardContext
    from headpatch.io.checkpoint import weight_files
    from headpatch.io.export import check_read_files
    from headpatch.io.files import read_record
    from headpatch.io.hub import PushOptions, cached_checkpoint_dir, push_folder
    from headpatch.loading import gguf_source, load_model, local_source
    from headpatch.qrhead.detect import detection_examples

    if job.model is None:
        raise HeadpatchError("give the MODEL to patch, or a --recipe that names it")
    if job.export.output is None:
        raise HeadpatchError("give the output directory with -o")
    show = not job.quiet
    gguf = gguf_source(job.model) if job.export.gguf else None  # before any model work, like the checks below
    source = local_source(job.model)
    check_output_dir(job.export.output, job.export.overwrite, source)
    if job.ia3 is not None:
        check_ia3_dir(job.ia3, job.export.overwrite, source, job.export.output)
    push = job.export.push_to_hub
    context = CardContext(repo_id=push, command=command)
    record = read_record(job.patch) if job.patch is not None else None
    qr_examples = None  # read before any model work, so bad data fails fast
    if job.qrhead.data is not None:
        data = None if job.qrhead.data == "builtin" else Path(job.qrhead.data)
        qr_examples = detection_examples(data, None, seed=job.seed)
    if record is not None and qr_examples is None:
        model = _fold_gguf(job, gguf, record, show, say, context) if gguf is not None else \
            _fold_patch(job, record, show, say, context)
    else:
        if gguf is None and source is not None and source.is_dir():
            # before training, not at the fold: a config or card linking outside, weights it cannot fold (.bin)
            check_read_files(source)
            weight_files(source)
        loaded = load_model(job.model, job.dtype, job.device, job.revision)
        record = _computed_record(job, loaded, record, qr_examples, show)
        model = _fold_gguf(job, gguf, record, show, say, context) if gguf is not None else \
            export_step(loaded, record, job.export.output, job.export.overwrite, show, say, context)
        # after the export, as on the fold-only path: an export that fails leaves no adapter behind
        _save_ia3(head_layout(loaded.model.config), loaded.source.reference, record, job,
                  cached_checkpoint_dir(loaded.source), say)
    out = model.parent if gguf is not None else model
    say(f"exported {len(record.coefficients())} patched heads -> {model}")
    if job.export.eval is not None:
        _evaluate_export(out, model, job, show, say)
    if push:
        options = PushOptions(push, job.export.private, job.export.push_revision, job.export.commit_message)
        say(f"pushed {out} to {push}: {push_folder(out, options)}")
    return ExportOutcome(out, record)


def _evaluate_export(out: Path, model: Path, job: ExportJob, show: bool, say: Say) -> None:
    """Evaluate the exported `model` (the folder, or the GGUF file in it) against its source; the report goes into
    OUT/eval/ and its table into the model card."""
    from headpatch.evaluation import run_eval, write_report

    if job.revision is not None:
        say("--eval compares with the source at its default revision", err=True)
    results = run_eval(str(model), job.model, quick=job.export.eval == "quick", seed=job.seed, dtype=job.dtype,
                       device=job.device, show_progress=show)
    report = write_report(results, out / "eval")
    add_evaluation_to_card(out, results, "eval/report.md")
    say(f"evaluation report -> {report}")


def check_report_matches(out: Path, results: dict[str, Any]) -> None:
    """Refuse to add a report to a folder that is not a headpatch export, or whose weights the report did not
    evaluate: compared by the weight files' sha256 where the report recorded it and the folder holds them, and for a
    GGUF export by the sha256 of the GGUF file the evaluated model was converted from (its weight hash covers the
    de-quantized copy in the cache)."""
    from headpatch.evaluation.models import folder_weights_hash

    if not (out / "headpatch.json").is_file():
        raise HeadpatchError(f"{out} is not a headpatch export (no headpatch.json); `card` adds evaluations to "
                             "exports only")
    evaluated = results["models"].get("patched") or results["models"].get("model") or {}
    recorded = (evaluated.get("weights") or {}).get("sha256")
    held = folder_weights_hash(out)["sha256"]
    if recorded and held and recorded != held:
        raise HeadpatchError(f"the report evaluated other weights than {out} holds (sha256 {recorded[:12]}... of "
                             f"the evaluated model, {held[:12]}... here)")
    ggufs = folder_weights_hash(out, (".gguf",))["files"]
    if ggufs and (evaluated.get("gguf") or {}).get("sha256") not in ggufs.values():
        raise HeadpatchError(f"the report did not evaluate the GGUF file {out} holds ({', '.join(ggufs)}); evaluate "
                             "that file (`headpatch eval OUT/FILE.gguf --against SOURCE`) and add that report")


def add_evaluation_to_card(out: Path, results: dict[str, Any], report_link: str) -> None:
    """Add a `headpatch eval` report's table to an export's card, and its figures to the card's model-index."""
    from headpatch.evaluation import summary_markdown
    from headpatch.io.export import add_evaluation

    section = (f"## Evaluation\n\n{summary_markdown(results)}\nFull report, figures and every number: "
               f"[{report_link}]({report_link}).\n")
    add_evaluation(out, section, results["summary"])
