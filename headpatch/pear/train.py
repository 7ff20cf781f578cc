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
from headpatch.pear.memory import SCORING_CHUNK
from headpatch.pear.proxy import (
    CopyBatch,
    copy_batch,
    copy_loss,
    copy_scores,
    sampleable_ids,
    special_prefix,
)
from headpatch.pear.scaling import HeadScaling, scaled_heads
from headpatch.pear.upper import LowerStates, lower_states
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


@dataclass(frozen=True)
class CheckSet:
    """The held-out copy batches of a training check (evaluation seeds only), one per length: the training n's,
    whose loss is reported, and each evaluation length's, whose accuracy is (one batch when the lengths coincide)."""

    n: int
    batches: dict[int, CopyBatch]
    accuracy_lengths: tuple[int, ...]

    def lower(self, model: Any, layout: HeadLayout, start: int) -> dict[int, LowerStates | None]:
        """Each batch's residual stream entering layer `start`: coefficients from there up leave the layers below
        unchanged, so the base and the patched check share them."""
        return {n: lower_states(model, layout, batch.input_ids, start, SCORING_CHUNK)
                for n, batch in self.batches.items()}


def check_set(vocab: torch.Tensor, prefix: list[int], options: TrainOptions) -> CheckSet:
    """The check's batches for `options` (its n, eval_lengths, eval_samples and seed)."""
    lengths = sorted({options.n, *options.eval_lengths})
    batches = {n: copy_batch(vocab, options.eval_samples, n, options.seed, "eval", prefix) for n in lengths}
    return CheckSet(options.n, batches, tuple(options.eval_lengths))


@torch.no_grad()
def evaluate_copy(model: Any, check: CheckSet, lower: dict[int, LowerStates | None] | None = None) -> Evaluation:
    """Held-out loss (at the training n) and copy accuracy per length, one pass per length; `lower`, from
    `check.lower`, runs only the layers above its start. Every sequence of a length has as many copyable positions,
    so the means over sequences are the means over positions."""
    scores = {n: copy_scores(model, batch, lower=(lower or {}).get(n)) for n, batch in check.batches.items()}
    losses = scores[check.n][0]
    return Evaluation(sum(losses) / len(losses),
                      {n: sum(scores[n][1]) / len(scores[n][1]) for n in check.accuracy_lengths})


def checked(model: Any, layout: HeadLayout, check: CheckSet,
            coefficients: dict[Head, float]) -> tuple[Evaluation, Evaluation]:
    """The check for the base and with `coefficients` applied, both run from the lowest patched layer up."""
    lower = check.lower(model, layout, min(layer for layer, _ in coefficients))
    before = evaluate_copy(model, check, lower)
    with scaled_heads(model, layout, coefficients):
        after = evaluate_copy(model, check, lower)
    return before, after


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
    before, after = checked(model, layout, check_set(vocab, prefix, options), coefficients)
    return TrainResult(coefficients, losses, before, after, time.perf_counter() - started)
