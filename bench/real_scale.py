"""What headpatch costs at a real model's size: wall time and peak memory of each step on a random-weight model built
from a recipe's architecture facts, beside headpatch's own memory estimates (`headpatch/pear/memory.py`).

    python bench/real_scale.py --recipe recipes/llama-3.2-1b-instruct.yaml --dtype float32
    python bench/real_scale.py --recipe recipes/llama-3.2-1b-instruct.yaml --dtype bfloat16 --settings 20x50

Time and memory do not depend on the weights' values, so nothing is downloaded: the model is
`AutoModelForCausalLM.from_config` with the recipe's config, seeded. QRHead detection needs a tokenizer: the bundled
demo's (SmolLM2) frames the built-in examples, whose ids all lie inside any larger vocabulary.

Each measurement runs in a fresh process that allocates as the CLI does (PyTorch's huge-page buffers, unless
THP_MEM_ALLOC_ENABLE is already set, e.g. to 0 to see glibc's heap retention), builds the model, resets the kernel's
peak-RSS mark (/proc/self/clear_refs), runs one step and reads the new peak: "working" is that peak above the resident
size just before the step, which is what the estimates' working figure predicts (they leave out Python and torch).
Steps (`--steps`): location on each chosen (samples, n) setting (all of PEAR's heads), `--train-steps` training steps
of the default batch (each timed), QRHead detection on `--examples` built-in examples (each timed), and on request the
default held-out copy check (`heldout`: 20 sequences at each of n = 25, 50, 100, 200). CPU only: this script has not
been run on a GPU.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headpatch.options import LocateOptions, TrainOptions, parse_settings  # noqa: E402
from headpatch.pear.memory import (  # noqa: E402
    DTYPE_BYTES,
    allocate_on_huge_pages,
    detect_bytes,
    heldout_bytes,
    locate_bytes,
    train_step_bytes,
)
from headpatch.recipe import load_recipe  # noqa: E402

MIB = 2**20


def _status_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _reset_peak() -> int:
    """Reset the peak-RSS mark to the current resident size and return that size in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS") * 1024


def _peak() -> int:
    return _status_kib("VmHWM") * 1024


def _model(recipe: Any, dtype: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(recipe.architecture.config(), dtype=getattr(torch, dtype))
    return model.eval().requires_grad_(False)


def _run_step(recipe: Any, dtype: str, step: str, argument: str, batch_size: int) -> dict[str, Any]:
    """One step in this process: build the model, reset the peak, run, report seconds and bytes."""
    allocate_on_huge_pages()  # as the CLI does; THP_MEM_ALLOC_ENABLE=0 in the environment measures without
    import torch

    from headpatch.architectures import head_layout

    torch.set_num_threads(2)
    model = _model(recipe, dtype)
    layout = head_layout(model.config)
    if step == "locate":
        from headpatch.pear.locate import locate_heads

        options = LocateOptions(settings=parse_settings(argument))
        before = _reset_peak()
        result = locate_heads(model, None, layout, options, show_progress=False)
        return {"seconds": [result.seconds], "before": before, "peak": _peak()}
    if step == "train":
        from headpatch.pear.proxy import copy_batch, copy_loss, sampleable_ids
        from headpatch.pear.scaling import HeadScaling

        options = TrainOptions(batch_size=batch_size)
        vocab = sampleable_ids(model.config.vocab_size, None, model.config)
        heads = [(layer, 0) for layer in range(layout.num_layers)][:10]
        before = _reset_peak()
        scaling = HeadScaling(heads, layout).attach(model)
        optimizer = torch.optim.AdamW([scaling.coefficients], lr=options.lr, weight_decay=0.0)
        seconds = []
        for index in range(int(argument)):
            began = time.perf_counter()
            batch = copy_batch(vocab, options.batch_size, options.n, index, "train", [model.config.bos_token_id])
            loss = copy_loss(model, batch.input_ids, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seconds.append(time.perf_counter() - began)
        return {"seconds": seconds, "before": before, "peak": _peak()}
    if step == "heldout":
        from headpatch.pear.proxy import sampleable_ids
        from headpatch.pear.train import check_set, evaluate_copy

        vocab = sampleable_ids(model.config.vocab_size, None, model.config)
        before = _reset_peak()
        began = time.perf_counter()
        evaluate_copy(model, check_set(vocab, [model.config.bos_token_id], TrainOptions()))
        return {"seconds": [time.perf_counter() - began], "before": before, "peak": _peak()}
    if step == "detect":
        from transformers import AutoTokenizer

        from headpatch.loading import resolve_source
        from headpatch.qrhead.detect import detect_heads, detection_examples
        from headpatch.qrhead.prompt import prompt_pair

        tokenizer = AutoTokenizer.from_pretrained(resolve_source("smollm2-135m").location)
        examples, _ = detection_examples(None, int(argument))
        tokens = max(len(prompt_pair(tokenizer, e.question, e.documents)[0].input_ids) for e in examples)
        before = _reset_peak()
        seconds = []
        for example in examples:
            began = time.perf_counter()
            detect_heads(model, tokenizer, [example])
            seconds.append(time.perf_counter() - began)
        return {"seconds": seconds, "before": before, "peak": _peak(), "tokens": tokens}
    raise ValueError(f"unknown step {step!r}")


def _estimate(recipe: Any, dtype: str, step: str, argument: str, tokens: int | None, batch_size: int) -> int:
    shape, size = recipe.architecture.shape(), DTYPE_BYTES[dtype]
    if step == "locate":
        return locate_bytes(shape, size, LocateOptions(settings=parse_settings(argument)), prefix=0)  # no tokenizer
    if step == "train":
        return train_step_bytes(shape, size, TrainOptions(batch_size=batch_size))
    if step == "heldout":
        return heldout_bytes(shape, size, TrainOptions())
    return detect_bytes(shape, size, tokens)


def _child(args: argparse.Namespace, step: str, argument: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--recipe", args.recipe, "--dtype", args.dtype,
               "--batch-size", str(args.batch_size), "--child", step, argument]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{step} {argument} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/llama-3.2-1b-instruct.yaml")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--settings", default=None, help="location settings to measure, e.g. 20x50,40x25 (default: "
                                                         "the recipe's)")
    parser.add_argument("--steps", default="locate,train,detect", help="comma-separated: locate, train, heldout, detect")
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--examples", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=TrainOptions().batch_size,
                        help="training sequences per step (smaller for a memory check where steps are slow, e.g. bf16)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    if args.child:
        print(json.dumps(_run_step(recipe, args.dtype, *args.child, args.batch_size)))
        return

    settings = args.settings or ",".join(f"{s}x{n}" for s, n in recipe.pear.settings)
    arguments = {"locate": settings.split(","), "train": [str(args.train_steps)], "heldout": ["-"],
                 "detect": [str(args.examples)]}
    steps = [(step, argument) for step in args.steps.split(",") for argument in arguments[step]]
    shape = recipe.architecture.shape()
    weights = shape.parameters * DTYPE_BYTES[args.dtype]
    print(f"{recipe.name}: random weights, {args.dtype}, CPU; estimated weights {weights / MIB:,.0f} MiB")
    print("| step | wall time | working peak measured | estimated | measured / estimated | process peak |")
    print("|---|---|---|---|---|---|")
    for step, argument in steps:
        measured = _child(args, step, argument)
        working = measured["peak"] - measured["before"]
        estimate = _estimate(recipe, args.dtype, step, argument, measured.get("tokens"), args.batch_size)
        seconds = measured["seconds"]
        timing = " + ".join(f"{s:.1f}" for s in seconds) + " s" if len(seconds) > 1 else f"{seconds[0]:.1f} s"
        label = {"locate": f"location, setting {argument}, all {shape.num_layers * shape.num_heads} heads",
                 "train": f"training steps (batch {args.batch_size} x n={TrainOptions().n})",
                 "heldout": "held-out copy check (20 x n=25..200)",
                 "detect": f"QR detection, per example (~{measured.get('tokens')} tokens)"}[step]
        print(f"| {label} | {timing} | {working / MIB:,.0f} MiB | {estimate / MIB:,.0f} MiB | "
              f"{working / estimate:.2f} | {measured['peak'] / MIB:,.0f} MiB |", flush=True)


if __name__ == "__main__":
    main()
