"""What every evaluation task gets and gives back."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from headpatch.evaluation.generation import greedy_answers
from headpatch.loading import LoadedModel


class TaskSkipped(Exception):
    """A task that does not apply to the models of a run; the message says why."""


@dataclass(frozen=True)
class TaskRun:
    """Everything a task sees besides its model and setting: the role of that model and the run's other models."""

    role: str
    models: Mapping[str, LoadedModel]
    seed: int
    show_progress: bool

    def progress_label(self, task: str) -> str:
        """The progress-bar label of this task on this model."""
        return f"{task} [{self.role}]"


@dataclass(frozen=True)
class Metric:
    """One row of the summary table: a headline figure of a task for every model."""

    task: str
    name: str
    values: dict[str, float]
    higher_is_better: bool = True
    relative: bool = False  # change reported as a ratio (perplexity) rather than a difference

    def as_dict(self) -> dict[str, Any]:
        """The row as plain data."""
        return {"task": self.task, "metric": self.name, "values": self.values,
                "higher_is_better": self.higher_is_better, "relative": self.relative}


@dataclass(frozen=True)
class Task:
    """A task: evaluate one model (plain-data result) and pick the headline figures from every model's result."""

    evaluate: Callable[[LoadedModel, Any, TaskRun], dict[str, Any]]
    headline: Callable[[dict[str, dict[str, Any]]], list[Metric]]


def require_tokenizer(loaded: LoadedModel, task: str) -> Any:
    """The model's tokenizer, or a skip: text tasks cannot run on a checkpoint without one."""
    if loaded.tokenizer is None:
        raise TaskSkipped(f"{task} needs a tokenizer and {loaded.source.name} has none")
    return loaded.tokenizer


def per_model(task: str, name: str, results: dict[str, dict[str, Any]], key: str, **options: Any) -> Metric:
    """A metric whose value for each model is `result[key]`."""
    return Metric(task, name, {role: result[key] for role, result in results.items()}, **options)


def answer_all(loaded: LoadedModel, tokenizer: Any, prompts: list[list[int]], setting: Any, run: TaskRun,
               task: str) -> list[str]:
    """Greedy answers to token-id prompts in input order, with the setting's answer length and batch budget."""
    answers = [""] * len(prompts)
    with tqdm(total=len(prompts), desc=run.progress_label(task), unit="prompt", disable=not run.show_progress) as bar:
        for i, answer in greedy_answers(loaded.model, tokenizer, prompts, setting.max_new_tokens, setting.batch_tokens):
            answers[i] = answer
            bar.update()
    return answers
