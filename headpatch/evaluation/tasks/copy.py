"""copy: held-out accuracy on the PEAR proxy task at several lengths."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from headpatch.evaluation.plots import lines, save
from headpatch.evaluation.tasks.base import Figures, Metric, Results, Task, TaskRun
from headpatch.loading import LoadedModel
from headpatch.pear.proxy import copy_batch, copy_scores, sampleable_ids, special_prefix


@dataclass(frozen=True)
class CopySetting:
    """Held-out proxy copy task: `samples` random sequences per length n."""

    lengths: tuple[int, ...]
    samples: int


def evaluate(loaded: LoadedModel, setting: CopySetting, run: TaskRun) -> dict[str, Any]:
    """Copy accuracy per length n on sequences of the "eval" seed stream, never used for location or training."""
    config = loaded.model.config
    vocab = sampleable_ids(config.vocab_size, loaded.tokenizer, config)
    prefix = special_prefix(loaded.tokenizer)
    accuracy, per_sequence = {}, {}
    for n in tqdm(setting.lengths, desc=run.progress_label("copy"), unit="length", disable=not run.show_progress):
        batch = copy_batch(vocab, setting.samples, n, run.seed, "eval", prefix)
        _, per_sequence[str(n)] = copy_scores(loaded.model, batch)
        accuracy[str(n)] = sum(per_sequence[str(n)]) / len(per_sequence[str(n)])
    return {"accuracy": accuracy, "mean": sum(accuracy.values()) / len(accuracy), "per_sequence": per_sequence}


def headline(results: Results) -> list[Metric]:
    """Accuracy at every length and its mean."""
    lengths = next(iter(results.values()))["accuracy"]
    rows = [Metric("copy", f"accuracy n={n}", {role: r["accuracy"][n] for role, r in results.items()},
                   per_item={role: r["per_sequence"][n] for role, r in results.items()}) for n in lengths]
    # every length has the same number of sequences: the mean over lengths is the mean over all sequences
    every = {role: [a for n in lengths for a in r["per_sequence"][n]] for role, r in results.items()}
    return [*rows, Metric("copy", "accuracy, mean over lengths", {role: r["mean"] for role, r in results.items()},
                          per_item=every)]


def figures(results: Results, out: Path) -> Figures:
    """Copy accuracy by length, one line per model."""
    series = {role: (list(r["accuracy"]), list(r["accuracy"].values())) for role, r in results.items()}
    figure = lines(series, "proxy copy task: held-out accuracy", "n (random tokens, repeated once)", "accuracy")
    return [("Proxy copy task, accuracy by length", save(figure, out, "copy_accuracy.png"))]


TASK = Task(
    name="copy", title="Proxy copy task (held-out)",
    quick=CopySetting(lengths=(25, 50, 100), samples=10),
    full=CopySetting(lengths=(25, 50, 100, 200), samples=50),
    run=evaluate, headline=headline, figures=figures,
)
