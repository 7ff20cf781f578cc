"""Choose K and train to convergence: one location's ranking, a ladder of K candidates each trained until a held-out
copy loss stops improving, a damage guard on generic text, and the best candidate within the guard.

Three disjoint sets of data play a part: training batches (purpose "train"), the selection set that early stopping
and the choice read (purpose "select", never trained on, never shown by `headpatch eval`), and the guard text, public
domain prose that no evaluation task uses (`data/guard_text.txt`). The guard reads the text twice over: a few windows
spread over it during training, cheaply, against stored base log-probabilities; and (by default) all of its windows
before a candidate is chosen, each window a paired item, so that the perplexity bound holds for the upper end of a 95%
interval rather than for a few windows' point estimate (the first two windows read +0.29% for a Gemma-3-270M patch
that cost +2% on held-out essays). Windows from one source text are alike, so the interval over windows is if
anything too narrow.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from headpatch.architectures import HeadLayout
from headpatch.errors import HeadpatchError
from headpatch.heads import Head
from headpatch.options import GUARD_WINDOW, TrainOptions, TuneOptions
from headpatch.pear.memory import SCORING_CHUNK
from headpatch.pear.proxy import CopyBatch, copy_batch, copy_loss, copy_scores, sampleable_ids, special_prefix
from headpatch.pear.scaling import HeadScaling, scaled_heads
from headpatch.pear.train import Evaluation, check_set, checked
from headpatch.pear.upper import LowerStates, fed_from, lower_states
from headpatch.runtime import input_device
from headpatch.stats import PairedChange, mean_interval, paired_change

GUARD_TEXT = ("public-domain prose: the Declaration of Independence; Lincoln's Gettysburg Address and Second Inaugural "
              "Address; the openings of Doyle's A Scandal in Bohemia, Austen's Pride and Prejudice, Darwin's Voyage of "
              "the Beagle, Franklin's Autobiography, Paine's Common Sense, Morris's News from Nowhere and Bierce's "
              "Devil's Dictionary")


@dataclass(frozen=True)
class Guard:
    """What a set of coefficients does to generic text: perplexity change and mean KL from the base."""

    perplexity_change: float  # relative
    kl: float  # nats per token

    def within(self, options: TuneOptions) -> bool:
        """Whether the change stays inside the guard's bounds."""
        return self.perplexity_change <= options.max_perplexity_increase and self.kl <= options.max_kl


@dataclass(frozen=True)
class GuardCheck:
    """What a set of coefficients does to the guard text's check windows, each window a paired item: the perplexity
    change with its 95% interval, and the mean KL from the base."""

    perplexity: PairedChange  # relative change of exp(mean per-window log-loss)
    kl: float  # nats per token, mean over windows

    def within(self, options: TuneOptions) -> bool:
        """Whether the interval's upper end and the KL stay inside the guard's bounds."""
        return self.perplexity.high <= options.max_perplexity_increase and self.kl <= options.max_kl


@dataclass(frozen=True)
class Selection:
    """Held-out copy figures of one set of coefficients on the selection set, per sequence."""

    losses: list[float]
    accuracy: list[float]

    @property
    def loss(self) -> float:
        """Mean copy loss over the selection set."""
        return sum(self.losses) / len(self.losses)

    @property
    def mean_accuracy(self) -> float:
        """Mean copy accuracy over the selection set."""
        return sum(self.accuracy) / len(self.accuracy)


@dataclass
class Candidate:
    """One K: its coefficients (at the kept step), how training went, and its figures."""

    k: int
    coefficients: dict[Head, float]
    steps: int  # the training step whose coefficients were kept
    steps_run: int
    stopped: str  # why training ended: "converged" (the held-out loss stopped improving), "damage guard" (the next
    # coefficients left it) or "step budget"
    selection: Selection
    guard: Guard
    within_guard: bool
    improvement: tuple[float, float]  # 95% interval of the mean per-sequence loss change from the base
    train_losses: list[float] = field(default_factory=list)
    # the guard text's check windows: measured for eligible candidates, lowest loss first, until one stays within it
    check: GuardCheck | None = None

    @property
    def eligible(self) -> bool:
        """Within the training guard and beyond noise: worth checking on the whole guard text."""
        return self.within_guard and self.beyond_noise

    @property
    def beyond_noise(self) -> bool:
        """The held-out copy loss is lower than the base's with 95% confidence."""
        return self.improvement[1] < 0


@dataclass
class TuneResult:
    """Every candidate, the base's figures, and which candidate was chosen (None: none within the guard improves)."""

    base: Selection
    candidates: list[Candidate]
    chosen: Candidate | None
    reason: str
    guard_windows: int  # windows of the guard text measured during training
    check_windows: int  # windows of the guard text a candidate is checked on before it is chosen
    seconds: float
    skipped: tuple[int, ...] = ()  # larger K values of the ladder left untrained, see `ladder_ends`
    before: Evaluation | None = None  # train.evaluate_copy's held-out figures for the base and the chosen candidate
    after: Evaluation | None = None


def guard_windows(tokenizer: Any, windows: int | None = None) -> torch.Tensor:
    """The first `windows` windows of 512 tokens of the guard text (all of them when None, fewer when the text is
    shorter)."""
    text = resources.files("headpatch.pear").joinpath("data/guard_text.txt").read_text(encoding="utf-8")
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    if len(ids) < GUARD_WINDOW:
        raise HeadpatchError("the guard text is shorter than one window for this tokenizer")
    return ids[: (len(ids) // GUARD_WINDOW) * GUARD_WINDOW].view(-1, GUARD_WINDOW)[:windows]


def spread_windows(windows: torch.Tensor, count: int) -> torch.Tensor:
    """`count` of `windows` spaced evenly from the first to the last, in order (all of them when there are no more).
    Training's early stop reads these: the guard text is ten unlike pieces, and its first window (the Declaration of
    Independence) moved under SmolLM2's patches about five times as far in KL as the median window, so an early stop
    on the first two windows stopped candidates the whole-text check passes."""
    total = len(windows)
    if count >= total:
        return windows
    return windows[[round(i * (total - 1) / max(count - 1, 1)) for i in range(count)]]


def _log_probs(model: Any, ids: torch.Tensor, lower: LowerStates | None = None, row: int = 0) -> torch.Tensor:
    with fed_from(lower, model, slice(row, row + 1)):
        return torch.log_softmax(model(input_ids=ids, use_cache=False).logits[:, :-1].float(), -1)


@torch.no_grad()
def base_log_probs(model: Any, windows: torch.Tensor) -> list[torch.Tensor]:
    """The model's next-token log-probabilities over each guard window, float32: what every guard measurement compares
    with, computed once per tuning run."""
    device = input_device(model)
    return [_log_probs(model, window.to(device)) for window in windows.split(1)]


def _window_figures(model: Any, layout: HeadLayout, coefficients: dict[Head, float], windows: torch.Tensor,
                    references: list[torch.Tensor] | None, lower: LowerStates | None,
                    bar: Any = None) -> tuple[list[float], list[float], list[float]]:
    """Per window: the base's and the patched model's mean next-token log-loss, and the mean KL(base ‖ patched). The
    base's log-probabilities come from `references`, or are computed window by window when it is None."""
    device = input_device(model)
    base_losses, patched_losses, kls = [], [], []
    for row, window in enumerate(windows.split(1)):
        ids = window.to(device)
        reference = references[row] if references is not None else _log_probs(model, ids, lower, row)
        with scaled_heads(model, layout, coefficients):
            patched = _log_probs(model, ids, lower, row)
        targets = ids[:, 1:, None]
        base_losses.append(-reference.gather(-1, targets).mean().item())
        patched_losses.append(-patched.gather(-1, targets).mean().item())
        kls.append((reference.exp() * (reference - patched)).sum(-1).mean().item())
        if bar is not None:
            bar.update(1)
    return base_losses, patched_losses, kls


@torch.no_grad()
def guard_figures(model: Any, layout: HeadLayout, coefficients: dict[Head, float], windows: torch.Tensor,
                  base: list[torch.Tensor] | None = None, lower: LowerStates | None = None) -> Guard:
    """Perplexity change and mean KL(base ‖ patched) of the next-token distributions over the guard windows; `base`,
    the model's own log-probabilities from base_log_probs, saves recomputing them, and `lower`, the windows' residual
    stream entering a layer no coefficient is below, running the layers under it."""
    base = base if base is not None else base_log_probs(model, windows)
    base_losses, patched_losses, kls = _window_figures(model, layout, coefficients, windows, base, lower)
    count = len(windows)
    return Guard(math.exp((sum(patched_losses) - sum(base_losses)) / count) - 1, sum(kls) / count)


@torch.no_grad()
def guard_check(model: Any, layout: HeadLayout, coefficients: dict[Head, float], windows: torch.Tensor,
                lower: LowerStates | None = None, bar: Any = None) -> GuardCheck:
    """Perplexity change with a 95% bootstrap interval over `windows` (each a paired item), mean KL(base ‖ patched).
    The base's log-probabilities are recomputed window by window rather than stored: over a 262k vocabulary, 39
    windows of them would hold 21 GB. `lower` as for guard_figures, for the base's forward too; `bar`, a progress bar
    advanced once per window."""
    base_losses, patched_losses, kls = _window_figures(model, layout, coefficients, windows, None, lower, bar)
    perplexity = paired_change(base_losses, patched_losses, relative=True, higher_is_better=False, log_items=True)
    return GuardCheck(perplexity, sum(kls) / len(kls))


def _selection(model: Any, batch: CopyBatch, lower: LowerStates | None = None) -> Selection:
    return Selection(*copy_scores(model, batch, lower=lower))


def _interval(candidate: Selection, base: Selection) -> tuple[float, float]:
    return mean_interval([c - b for c, b in zip(candidate.losses, base.losses)])


def _linear_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / (warmup_steps + 1)))


@dataclass(frozen=True)
class _Shared:
    """What every candidate reuses: the vocabulary and prefix of the proxy task, the selection set and the base's
    figures on it, the guard windows and the base's log-probabilities over them."""

    vocab: torch.Tensor
    prefix: list[int]
    select: CopyBatch
    base: Selection
    windows: torch.Tensor
    reference: list[torch.Tensor]


@dataclass
class _Trajectory:
    kept: tuple[int, dict[Head, float], Selection, Guard]  # (step, coefficients, held-out figures, guard figures)
    steps_run: int
    stopped: str  # one of STOPS
    losses: list[float]


def _train(model: Any, layout: HeadLayout, heads: Sequence[Head], options: TuneOptions, shared: _Shared,
           bar: Any) -> _Trajectory:
    """Adam at a constant rate after warm-up from coefficients of 1. Every `eval_every` steps the coefficients are
    measured on the selection set and the guard text; training stops when they leave the guard (the previous
    measured coefficients are kept), after `patience` measurements without an improvement of `min_improvement`
    (converged), or at `max_steps`. Of the measured coefficients within the guard, those with the lowest held-out
    loss are kept."""
    device = input_device(model)
    # every measurement reads the same inputs, unchanged below the lowest trained layer: that far, computed once
    start = min(layer for layer, _ in heads)
    select_lower = lower_states(model, layout, shared.select.input_ids, start, chunk=SCORING_CHUNK)
    guard_lower = lower_states(model, layout, shared.windows, start, chunk=1)
    scaling = HeadScaling(heads, layout).attach(model)
    optimizer = torch.optim.Adam([scaling.coefficients], lr=options.lr)
    schedule = _linear_warmup(optimizer, options.warmup_steps)
    kept = (0, scaling.as_dict(), shared.base, Guard(0.0, 0.0))  # coefficients of 1 are the base model
    stale, losses, stopped, step = 0, [], "step budget", 0
    try:
        for step in range(1, options.max_steps + 1):
            seed = options.seed * 1_000_003 + step
            batch = copy_batch(shared.vocab, options.batch_size, options.n, seed, "train", shared.prefix)
            loss = copy_loss(model, batch.input_ids.to(device), batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.update(1)
            if step % options.eval_every and step != options.max_steps:
                continue
            figures = _selection(model, shared.select, select_lower)
            coefficients = scaling.as_dict()
            scaling.detach()
            guard = guard_figures(model, layout, coefficients, shared.windows, shared.reference, guard_lower)
            scaling.attach(model)
            if not guard.within(options):
                stopped = "damage guard"
                break
            if figures.loss < kept[2].loss - options.min_improvement:
                kept, stale = (step, coefficients, figures, guard), 0
            else:
                stale += 1
                if stale >= options.patience:
                    stopped = "converged"
                    break
    finally:
        scaling.detach()
    return _Trajectory(kept, step, stopped, losses)


def tune(model: Any, tokenizer: Any, layout: HeadLayout, ranked: Sequence[Head], options: TuneOptions = TuneOptions(),
         show_progress: bool = True) -> TuneResult:
    """Train one candidate per K of the ladder on the top-K heads of `ranked` and choose the lowest held-out copy loss
    within the damage guard. Every candidate starts from coefficients of 1: the guard bounds how far coefficients may
    move, so a start from the previous candidate's guard-limited coefficients left larger K no room (measured on
    SmolLM2: K=10, 20 and 40 all kept their starting point)."""
    if tokenizer is None:
        raise HeadpatchError("tuning measures damage on text, so it needs the model's tokenizer; force fixed values "
                             "with --k and --steps")
    started = time.perf_counter()
    model.requires_grad_(False)
    vocab = sampleable_ids(model.config.vocab_size, tokenizer, model.config)
    prefix = special_prefix(tokenizer)
    select = copy_batch(vocab, options.select_samples, options.n, options.seed, "select", prefix)
    text_windows = guard_windows(tokenizer)
    windows = spread_windows(text_windows, options.guard_windows)
    base = _selection(model, select)
    shared = _Shared(vocab, prefix, select, base, windows, base_log_probs(model, windows))
    ladder = options.ladder_for(len(ranked))
    candidates: list[Candidate] = []
    skipped: tuple[int, ...] = ()
    with tqdm(total=len(ladder) * options.max_steps, desc="tuning K", unit="step", disable=not show_progress) as bar:
        for rung, k in enumerate(ladder):
            trajectory = _train(model, layout, ranked[:k], options, shared, bar)
            bar.update(options.max_steps - trajectory.steps_run)
            step, coefficients, selection, guard = trajectory.kept
            candidates.append(Candidate(
                k=k, coefficients=coefficients, steps=step, steps_run=trajectory.steps_run,
                stopped=trajectory.stopped, selection=selection, guard=guard, within_guard=guard.within(options),
                improvement=_interval(selection, base), train_losses=trajectory.losses,
            ))
            if ladder_ends(candidates, base):
                skipped = ladder[rung + 1:]
                bar.update(len(skipped) * options.max_steps)
                break
    whole_text = text_windows[:options.check_windows]
    for candidate in sorted((c for c in candidates if c.eligible), key=lambda c: c.selection.loss):
        start = min(layer for layer, _ in candidate.coefficients)
        lower = lower_states(model, layout, whole_text, start, chunk=1)
        with tqdm(total=len(whole_text), desc=f"checking K={candidate.k} on the guard text", unit="window",
                  disable=not show_progress) as bar:
            candidate.check = guard_check(model, layout, candidate.coefficients, whole_text, lower, bar)
        if candidate.check.within(options):
            break
    chosen, reason = choose(candidates, base, options)
    result = TuneResult(base, candidates, chosen, reason, len(windows), len(whole_text), time.perf_counter() - started,
                        skipped)
    if chosen is not None:
        check = check_set(vocab, prefix, chosen_training_options(chosen, options))
        result.before, result.after = checked(model, layout, check, chosen.coefficients)
    return result


def ladder_ends(candidates: Sequence[Candidate], base: Selection) -> bool:
    """Whether the ladder stops climbing after the last candidate: the damage guard stopped its training before its
    held-out copy loss beat the best so far (a smaller K's, or the base's). A larger K scales more heads per step and
    meets the guard sooner (SmolLM2: K=10 at step 35, 20 at step 25, 40 at step 15), so it has even less room."""
    *smaller, last = candidates
    best = min([base.loss, *(c.selection.loss for c in smaller)])
    return last.stopped == "damage guard" and last.selection.loss >= best


def chosen_training_options(chosen: Candidate, options: TuneOptions) -> TrainOptions:
    """The fixed training settings that describe the chosen candidate's run."""
    return TrainOptions(steps=max(chosen.steps, 1), batch_size=options.batch_size, n=options.n, lr=options.lr,
                        warmup_steps=options.warmup_steps, seed=options.seed)


def choose(candidates: Sequence[Candidate], base: Selection, options: TuneOptions) -> tuple[Candidate | None, str]:
    """The candidate with the lowest held-out copy loss among those within the guard, during training and on the whole
    guard text, whose improvement on the base is beyond noise, and why; None with the reason when there is none."""
    bounds = (f"perplexity +{options.max_perplexity_increase:.1%} (the upper end of its 95% interval on the whole "
              f"text), KL {options.max_kl} nats/token")
    passed = [c for c in candidates if c.eligible and c.check is not None and c.check.within(options)]
    winner = min(passed, key=lambda c: c.selection.loss) if passed else None
    excluded = [f"K={c.k} {_excluded_because(c, options)}" for c in candidates if c is not winner]
    listed = f"; excluded: {', '.join(excluded)}" if excluded else ""
    if winner is None:
        return None, (f"no candidate lowers the held-out copy loss ({base.loss:.4f} for the base) beyond noise while "
                      f"staying within the damage guard ({bounds}){listed}")
    check = winner.check.perplexity
    reason = (f"K={winner.k}: the lowest held-out copy loss ({winner.selection.loss:.4f}, base {base.loss:.4f}, "
              f"change 95% interval [{winner.improvement[0]:+.4f}, {winner.improvement[1]:+.4f}]) of the candidates "
              f"within the guard ({bounds}; on {check.items} windows it changed perplexity by {check.change:+.2%} "
              f"[{check.low:+.2%}, {check.high:+.2%}], KL {winner.check.kl:.4f}) and beyond noise")
    return winner, reason + listed


def _excluded_because(candidate: Candidate, options: TuneOptions) -> str:
    if not candidate.within_guard:
        return "outside the guard"
    if not candidate.beyond_noise:
        return "not beyond noise"
    if candidate.check is None:
        return "not checked on the whole guard text (a lower loss passed)"
    if candidate.check.within(options):
        return "a higher loss"
    check = candidate.check.perplexity
    return (f"outside the guard on the whole text (perplexity {check.change:+.2%} [{check.low:+.2%}, "
            f"{check.high:+.2%}], KL {candidate.check.kl:.4f})")
