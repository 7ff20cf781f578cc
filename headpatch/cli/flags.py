"""Command-line options shared by the commands, each defined once; defaults come from headpatch.options."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from headpatch.options import (
    DTYPE_NAMES,
    LARGE_MODEL_PARAMETERS,
    PROMPT_LAYOUT_NAMES,
    QR_HEADS_LARGE,
    QR_HEADS_SMALL,
    ExportJob,
    LocateOptions,
    QRHeadOptions,
    TrainOptions,
    TuneOptions,
)

JOB = ExportJob()
LOCATE = LocateOptions()
TRAIN = TrainOptions()
TUNE = TuneOptions()
QRHEAD = QRHeadOptions()
DEFAULT_LADDER = ",".join(str(k) for k in TUNE.ladder)

Model = Annotated[str, typer.Argument(
    help="Hub id, local checkpoint directory, .gguf file, or a demo alias (smollm2-135m, gemma3-270m).",
    show_default=False)]
Output = Annotated[Path, typer.Option("-o", "--output", help="where to write the result.", show_default=False)]
Dtype = Annotated[str, typer.Option(help=f"dtype for locating, training and scoring: {', '.join(DTYPE_NAMES)}.")]
Device = Annotated[str, typer.Option(
    "--device", "--device-map", help="torch device, or 'auto' for accelerate's placement across GPUs and CPU memory.")]
Revision = Annotated[Optional[str], typer.Option(help="Hub revision (branch, tag or commit).")]
Seed = Annotated[int, typer.Option(help="seed of the proxy sequences (and of the built-in QRHead set).")]
_LAYOUT_HELP = (f"QRHead prompt frame: {', '.join(PROMPT_LAYOUT_NAMES)} (the public implementation's hard-coded "
                "strings, to score its published head lists on the prompt they were detected on).")
PromptLayout = Annotated[str, typer.Option("--prompt-layout", help=_LAYOUT_HELP)]
QrheadLayout = Annotated[str, typer.Option("--qrhead-layout", help=_LAYOUT_HELP)]
_QR_K_HELP = (f"QR heads to keep; default {QR_HEADS_SMALL} ({QR_HEADS_LARGE} for models of "
              f"{LARGE_MODEL_PARAMETERS // 10**9}B+ parameters).")
QrK = Annotated[Optional[int], typer.Option("--k", help=_QR_K_HELP, show_default=False)]
QrheadK = Annotated[Optional[int], typer.Option("--qrhead-k", help=_QR_K_HELP, show_default=False)]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars.")]
Overwrite = Annotated[bool, typer.Option(help="replace the output of an earlier run of the same command.")]

K = Annotated[int, typer.Option("--k", help="number of suppression heads to patch.")]
Settings = Annotated[str, typer.Option(help="(samples)x(n) location settings, comma-separated.")]
MeanVector = Annotated[str, typer.Option(help="mean vector: batch (reference code) or sequence (paper text).")]
Propagation = Annotated[str, typer.Option(help="direct (path patching, reference code) or total effect.")]

Steps = Annotated[int, typer.Option(help="training steps.")]
Ladder = Annotated[str, typer.Option(help="K values to try when tuning, comma-separated.")]
FixedK = Annotated[Optional[int], typer.Option(
    "--k", help="patch this many heads, no tuning (default: tuned, see --ladder).", show_default=False)]
FixedSteps = Annotated[Optional[int], typer.Option(
    help=f"train this many steps, no tuning (with --k alone: {TRAIN.steps}).", show_default=False)]
_FIXED = " (export: with --k or --steps; tuning reads tune.{} from a recipe)"
BatchSize = Annotated[int, typer.Option(help="sequences per training step" + _FIXED.format("batch_size") + ".")]
N = Annotated[int, typer.Option(
    "--n", help="length n of the random half of training sequences" + _FIXED.format("n") + ".")]
Lr = Annotated[float, typer.Option(help="AdamW learning rate" + _FIXED.format("lr") + ".")]
WarmupSteps = Annotated[int, typer.Option(
    "--warmup-steps", "--warmup", help="linear warm-up steps" + _FIXED.format("warmup_steps") + ".")]
Ia3 = Annotated[Optional[Path], typer.Option(help="also save the coefficients as a peft IA3 adapter here.")]

Private = Annotated[bool, typer.Option(help="create the Hub repo as private.")]
CommitMessage = Annotated[Optional[str], typer.Option(help="commit message of the upload.")]
