"""ppl: perplexity on essays that no other task shows the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from headpatch.evaluation.essay_split import heldout_essays
from headpatch.evaluation.metrics import perplexity, window_losses
from headpatch.evaluation.tasks.base import Metric, Results, Task, TaskRun, per_model, require_tokenizer
from headpatch.loading import LoadedModel


@dataclass(frozen=True)
class PplSetting:
    """Perplexity over `windows` non-overlapping windows of `window` tokens of held-out essays."""

    window: int
    windows: int


def evaluate(loaded: LoadedModel, setting: PplSetting, run: TaskRun) -> dict[str, Any]:
    """Token-level perplexity over the first `windows` windows of the held-out essays (the seed plays no part), and
    for the patched model of a comparison the mean KL divergence of its next-token distributions from the base's."""
    tokenizer = require_tokenizer(loaded, "ppl")
    essays = heldout_essays()
    base = run.models.get("base") if run.role == "patched" else None  # the base's KL from itself is zero
    with tqdm(total=1, desc=run.progress_label("ppl"), disable=not run.show_progress) as bar:
        losses, divergences = window_losses(loaded.model, tokenizer, list(essays.values()), setting.window,
                                            setting.windows, base.model if base is not None else None)
        bar.update()
    return {"perplexity": perplexity(losses), "window_losses": losses, "kl_from_base": sum(divergences) / len(losses),
            "window_kl": divergences, "essays": list(essays)}


def headline(results: Results) -> list[Metric]:
    """Perplexity, compared as a relative change, and the mean KL divergence from the base's predictions."""
    rows = [per_model("ppl", "perplexity (lower is better)", results, "perplexity", items="window_losses",
                      higher_is_better=False, relative=True, log_items=True)]
    if "base" in results and "patched" in results:
        rows.append(per_model("ppl", "KL from base, nats per token (lower is better)", results, "kl_from_base",
                              items="window_kl", higher_is_better=False))
    return rows


TASK = Task(
    name="ppl", title="Perplexity on held-out essays",
    quick=PplSetting(window=512, windows=8),
    full=PplSetting(window=512, windows=48),
    run=evaluate, headline=headline,
)
