"""Learn PEAR coefficients: one float32 scalar per suppression head, the model frozen, loss on the copy half only."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from headpatch.architectures import HeadLayout
from headpatch.errors import HeadpatchError
from headpatch.heads import Head
from headpatch.options import TrainOptions
from headpatch.pear.proxy import copy_accuracy, copy_batch, copy_loss, sampleable_ids, special_prefix
from headpatch.pear.scaling import HeadScaling, scaled_heads
from headpatch.runtime import input_device


@dataclass
class Evaluation:
    """Held-out copy-task figures for one set of coefficients."""

    loss: float
    accuracy: dict[int, float] = field(default_factory=dict)


@dataclass
class TrainResult:
    """Learned coefficients with the held-out figures before and after."""

    coefficients: dict[Head, float]
    losses: list[float]
    before: Evaluation
    after: Evaluation
    seconds: float


@torch.no_grad()
def evaluate_copy(model: Any, vocab: torch.Tensor, prefix: list[int], options: TrainOptions) -> Evaluation:
    """Held-out loss (at the training n) and copy accuracy per length, on evaluation seeds only."""
    device = input_device(model)
    batch = copy_batch(vocab, options.eval_samples, options.n, options.seed, "eval", prefix)
    ids = batch.input_ids.to(device)
    loss = copy_loss(model, ids, batch).item()
    accuracy = {
        n: copy_accuracy(model, copy_batch(vocab, options.eval_samples, n, options.seed, "eval", prefix))
        for n in options.eval_lengths
    }
    return Evaluation(loss, accuracy)


def train_coefficients(
    model: Any, tokenizer: Any, layout: HeadLayout, heads: Sequence[Head], options: TrainOptions = TrainOptions(),
    show_progress: bool = True,
) -> TrainResult:
    """Fit the coefficients of `heads` on the proxy copy task with everything else frozen."""
    from transformers import get_linear_schedule_with_warmup

    if not heads:
        raise HeadpatchError("no heads to train")
    started = time.perf_counter()
    vocab = sampleable_ids(model.config.vocab_size, tokenizer, model.config)
    prefix = special_prefix(tokenizer)
    device = input_device(model)
    model.requires_grad_(False)
    before = evaluate_copy(model, vocab, prefix, options)
    scaling = HeadScaling(heads, layout).attach(model)
    optimizer = torch.optim.AdamW([scaling.coefficients], lr=options.lr, weight_decay=0.0)
    schedule = get_linear_schedule_with_warmup(optimizer, options.warmup_steps, options.steps)
    losses = []
    try:
        with tqdm(range(options.steps), desc="training coefficients", disable=not show_progress) as bar:
            for step in bar:
                batch = copy_batch(vocab, options.batch_size, options.n, options.seed * 1_000_003 + step, "train", prefix)
                ids = batch.input_ids.to(device)
                loss = copy_loss(model, ids, batch)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
                bar.set_postfix(loss=f"{loss.item():.4f}")
    finally:
        scaling.detach()
    coefficients = scaling.as_dict()
    with scaled_heads(model, layout, coefficients):
        after = evaluate_copy(model, vocab, prefix, options)
    return TrainResult(coefficients, losses, before, after, time.perf_counter() - started)
