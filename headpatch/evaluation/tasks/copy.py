"""copy: held-out accuracy on the PEAR proxy task at several lengths."""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

from headpatch.evaluation.settings import CopySetting
from headpatch.evaluation.tasks.base import Metric, TaskRun, per_model
from headpatch.loading import LoadedModel
from headpatch.pear.proxy import copy_accuracy, copy_batch, sampleable_ids, special_prefix


def evaluate(loaded: LoadedModel, setting: CopySetting, run: TaskRun) -> dict[str, Any]:
    """Copy accuracy per length n on sequences of the "eval" seed stream, never used for location or training."""
    config = loaded.model.config
    vocab = sampleable_ids(config.vocab_size, loaded.tokenizer, config)
    prefix = special_prefix(loaded.tokenizer)
    accuracy = {}
    for n in tqdm(setting.lengths, desc=run.progress_label("copy"), unit="length", disable=not run.show_progress):
        batch = copy_batch(vocab, setting.samples, n, run.seed, "eval", prefix)
        accuracy[str(n)] = copy_accuracy(loaded.model, batch)
    return {"accuracy": accuracy, "mean": sum(accuracy.values()) / len(accuracy)}


def headline(results: dict[str, dict[str, Any]]) -> list[Metric]:
    """Accuracy at every length and its mean."""
    lengths = next(iter(results.values()))["accuracy"]
    rows = [Metric("copy", f"accuracy n={n}", {role: r["accuracy"][n] for role, r in results.items()})
            for n in lengths]
    return [*rows, per_model("copy", "accuracy, mean over lengths", results, "mean")]
