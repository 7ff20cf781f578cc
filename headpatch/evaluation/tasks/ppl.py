"""ppl: perplexity on essays that no other task shows the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from headpatch.evaluation.essay_split import heldout_essays
from headpatch.evaluation.metrics import perplexity
from headpatch.evaluation.tasks.base import Metric, Results, Task, TaskRun, per_model, require_tokenizer
from headpatch.loading import LoadedModel


@dataclass(frozen=True)
class PplSetting:
    """Perplexity over `windows` non-overlapping windows of `window` tokens of held-out essays."""

    window: int
    windows: int


def evaluate(loaded: LoadedModel, setting: PplSetting, run: TaskRun) -> dict[str, Any]:
    """Token-level perplexity over the first `windows` windows of the held-out essays (the seed plays no part)."""
    tokenizer = require_tokenizer(loaded, "ppl")
    essays = heldout_essays()
    with tqdm(total=1, desc=run.progress_label("ppl"), disable=not run.show_progress) as bar:
        value = perplexity(loaded.model, tokenizer, list(essays.values()), setting.window, setting.windows)
        bar.update()
    return {"perplexity": value, "essays": list(essays)}


def headline(results: Results) -> list[Metric]:
    """Perplexity, compared as a relative change."""
    return [per_model("ppl", "perplexity (lower is better)", results, "perplexity", higher_is_better=False,
                      relative=True)]


TASK = Task(
    name="ppl", title="Perplexity on held-out essays",
    quick=PplSetting(window=512, windows=8),
    full=PplSetting(window=512, windows=48),
    run=evaluate, headline=headline,
)
