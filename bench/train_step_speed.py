"""A training step and the held-out copy check two ways on one model, alternating in one run.

    python bench/train_step_speed.py --heads smollm2-135m-pear/headpatch.json   # an export's chosen heads
    python bench/train_step_speed.py --heads ... --steps 12 --checks 2

Training step (batch of 10 sequences of n = 25, the chosen heads scaled, forward and backward): the LM head on the
copy half as a trailing slice of the batch (`logits_to_keep=n`, before) against the copy positions gathered by index
(today). The slice is a strided view that the head projects sequence by sequence; gathered, it is one matrix product.

Held-out check as tuning runs it (training n = 25; 20 sequences at n = 25, 50, 100, 200; base then patched): whole
forwards with the strided LM head and n = 25 run twice, once for the loss and once for the accuracy (before), against
one pass per length from the lowest patched layer up (today). The two paths alternate, the first untimed.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headpatch.architectures import head_layout  # noqa: E402
from headpatch.loading import load_model  # noqa: E402
from headpatch.options import TrainOptions, TuneOptions  # noqa: E402
from headpatch.pear.proxy import copy_batch, copy_loss, copy_targets, sampleable_ids, special_prefix  # noqa: E402
from headpatch.pear.scaling import HeadScaling, scaled_heads  # noqa: E402
from headpatch.pear.train import check_set, checked  # noqa: E402
from headpatch.record import PatchRecord  # noqa: E402


def _strided_logits(model, batch) -> torch.Tensor:
    keep = batch.input_ids.shape[1] - batch.copy_positions.start
    return model(input_ids=batch.input_ids, use_cache=False, logits_to_keep=keep).logits[:, : batch.n - 1]


def _strided_loss(model, batch) -> torch.Tensor:
    targets = copy_targets(batch.input_ids, batch).flatten()
    return torch.nn.functional.cross_entropy(_strided_logits(model, batch).float().flatten(0, 1), targets)


def _gathered_loss(model, batch) -> torch.Tensor:
    return copy_loss(model, batch.input_ids, batch)


@torch.no_grad()
def _whole_check(model, vocab, prefix, options: TrainOptions) -> tuple[float, dict[int, float]]:
    """The check before: the loss batch and every accuracy batch scored separately, whole forwards."""
    batch = copy_batch(vocab, options.eval_samples, options.n, options.seed, "eval", prefix)
    loss = _strided_loss(model, batch).item()
    accuracy = {}
    for n in options.eval_lengths:
        batch = copy_batch(vocab, options.eval_samples, n, options.seed, "eval", prefix)
        hits = _strided_logits(model, batch).argmax(-1) == copy_targets(batch.input_ids, batch)
        accuracy[n] = hits.float().mean().item()
    return loss, accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--heads", required=True, help="an export's headpatch.json: its chosen heads and coefficients")
    parser.add_argument("--steps", type=int, default=12, help="training steps timed per path")
    parser.add_argument("--checks", type=int, default=1, help="held-out checks timed per path")
    args = parser.parse_args()
    loaded = load_model(args.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    model.requires_grad_(False)
    layout = head_layout(model.config)
    record = PatchRecord.from_text(Path(args.heads).read_text(encoding="utf-8"))
    coefficients = record.pear.coefficient_map()
    tune = TuneOptions()
    vocab = sampleable_ids(model.config.vocab_size, tokenizer, model.config)
    prefix = special_prefix(tokenizer)

    scaling = HeadScaling(list(coefficients), layout).attach(model)
    paths = {"strided": _strided_loss, "gathered": _gathered_loss}
    seconds = dict.fromkeys(paths, 0.0)
    gap = 0.0
    for step in range(args.steps + 1):  # step 0 warms up, untimed
        batch = copy_batch(vocab, tune.batch_size, tune.n, step, "train", prefix)
        gradients = {}
        for name in sorted(paths, reverse=step % 2 == 1):  # each path goes first every other step
            scaling.coefficients.grad = None
            began = time.perf_counter()
            paths[name](model, batch).backward()
            seconds[name] += (time.perf_counter() - began) if step else 0.0
            gradients[name] = scaling.coefficients.grad.clone()
        gap = max(gap, (gradients["strided"] - gradients["gathered"]).abs().max().item())
    scaling.detach()
    lowest = min(layer for layer, _ in coefficients)
    print(f"model {args.model}, {len(coefficients)} heads from layer {lowest}; "
          f"training step ({tune.batch_size} x n={tune.n}, forward + backward), mean of {args.steps}:")
    print(f"  LM head on a strided slice {seconds['strided'] / args.steps:.2f} s, on gathered positions "
          f"{seconds['gathered'] / args.steps:.2f} s: {seconds['strided'] / seconds['gathered']:.2f}x; "
          f"max |gradient difference| over the steps {gap:.1e}")

    options = TrainOptions(n=tune.n)  # the check tuning runs on its chosen candidate
    check = check_set(vocab, prefix, options)
    _whole_check(model, vocab, prefix, dataclasses.replace(options, eval_lengths=(options.n,)))  # warm-up
    seconds = {"whole": 0.0, "today": 0.0}
    for _ in range(args.checks):
        began = time.perf_counter()
        whole = _whole_check(model, vocab, prefix, options)
        with scaled_heads(model, layout, coefficients):
            whole_after = _whole_check(model, vocab, prefix, options)
        seconds["whole"] += time.perf_counter() - began
        began = time.perf_counter()
        before, after = checked(model, layout, check, coefficients)
        seconds["today"] += time.perf_counter() - began
    loss_gap = max(abs(whole[0] - before.loss), abs(whole_after[0] - after.loss))
    accuracy_gap = max(abs(whole[1][n] - before.accuracy[n]) for n in options.eval_lengths)
    accuracy_gap = max(accuracy_gap, *(abs(whole_after[1][n] - after.accuracy[n]) for n in options.eval_lengths))
    print(f"held-out check ({options.eval_samples} sequences at n = {', '.join(map(str, options.eval_lengths))}, base "
          f"and patched), mean of {args.checks}:")
    print(f"  whole forwards {seconds['whole'] / args.checks:.1f} s, from the lowest patched layer "
          f"{seconds['today'] / args.checks:.1f} s: {seconds['whole'] / seconds['today']:.2f}x; max |loss difference| "
          f"{loss_gap:.1e}, max |accuracy difference| {accuracy_gap:.1e}")


if __name__ == "__main__":
    main()
