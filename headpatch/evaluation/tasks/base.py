"""What every evaluation task is, gets and gives back."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from tqdm.auto import tqdm

from headpatch.evaluation.generation import answer_in, greedy_answers
from headpatch.evaluation.saved_answers import ModelAnswers
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
    saved: ModelAnswers | None = None  # where this model's answers are kept as they come, and found on a rerun

    def progress_label(self, task: str) -> str:
        """The progress-bar label of this task on this model."""
        return f"{task} [{self.role}]"


@dataclass(frozen=True)
class Metric:
    """One row of the summary table: a headline figure of a task for every model, and the per-item values it is the
    mean of (in the same item order for every model), from which the comparison gets its interval and test."""

    task: str
    name: str
    values: dict[str, float]
    higher_is_better: bool = True
    relative: bool = False  # change reported as a ratio (perplexity) rather than a difference
    per_item: dict[str, list[float]] | None = None
    log_items: bool = False  # the items are log-losses and the value is exp of their mean (perplexity)

    def as_dict(self) -> dict[str, Any]:
        """The row as plain data (results.json keeps the items themselves with each task's answers)."""
        return {"task": self.task, "metric": self.name, "values": self.values,
                "higher_is_better": self.higher_is_better, "relative": self.relative}


Results = dict[str, dict[str, Any]]  # a task's plain-data result for every model of the run, by role
Figures = list[tuple[str, str]]  # (caption, file name) pairs, in the order the report shows them
SettingT = TypeVar("SettingT")


@dataclass(frozen=True)
class Task(Generic[SettingT]):
    """Everything the evaluation knows about a task; the registry (headpatch.evaluation.registry) lists them.

    `title` names the task in the report's list of settings. `quick` takes a few minutes for two 135M models on a
    2-core CPU; `full` gives the figures a report shows, sized for 300 paired answers in mdqa and niah (measured there:
    niah 52 and 67 minutes for the two models, mdqa with perplexity 49 minutes for both). `run` evaluates one model
    and returns plain data (results.json keeps it as is); `headline` picks the summary-table rows from every model's
    result; `figures` draws the report's figures from the same results into a folder, for the tasks that have any.
    A task that is not `default` runs only when named.
    """

    name: str
    title: str
    quick: SettingT
    full: SettingT
    run: Callable[[LoadedModel, SettingT, TaskRun], dict[str, Any]]
    headline: Callable[[Results], list[Metric]]
    figures: Callable[[Results, Path], Figures] | None = None
    default: bool = True  # run when no task is named


def require_tokenizer(loaded: LoadedModel, task: str) -> Any:
    """The model's tokenizer, or a skip: text tasks cannot run on a checkpoint without one."""
    if loaded.tokenizer is None:
        raise TaskSkipped(f"{task} needs a tokenizer and {loaded.source.name} has none")
    return loaded.tokenizer


def per_model(task: str, name: str, results: Results, key: str, items: str | None = None, **options: Any) -> Metric:
    """A metric whose value for each model is `result[key]` and whose per-item values are `result[items]`."""
    per_item = {role: result[items] for role, result in results.items()} if items is not None else None
    return Metric(task, name, {role: result[key] for role, result in results.items()}, per_item=per_item, **options)


def item_metric(task: str, name: str, results: Results, select: Any, **options: Any) -> Metric:
    """A metric that is the mean of per-item values `select(result)` for each model."""
    per_item = {role: [float(v) for v in select(result)] for role, result in results.items()}
    values = {role: sum(items) / len(items) for role, items in per_item.items()}
    return Metric(task, name, values, per_item=per_item, **options)


def answer_all(loaded: LoadedModel, tokenizer: Any, prompts: list[list[int]], setting: Any, run: TaskRun,
               task: str) -> list[str]:
    """Greedy answers to token-id prompts in input order, with the setting's answer length and batch budget; answers
    on file from an interrupted run are reused, and each new batch's answers are filed as it finishes. The file keeps
    whole continuations; what is returned is the answer each gives (`answer_in`)."""
    saved = run.saved
    keys = saved.keys(prompts, setting.max_new_tokens, setting.batch_tokens) if saved else []
    kept = {i: answer for i, key in enumerate(keys) if (answer := saved.log.get(key)) is not None} if saved else {}
    answers = [kept.get(i, "") for i in range(len(prompts))]
    with tqdm(total=len(prompts), initial=len(kept), desc=run.progress_label(task), unit="prompt",
              disable=not run.show_progress) as bar:
        for batch in greedy_answers(loaded.model, tokenizer, prompts, setting.max_new_tokens, setting.batch_tokens,
                                    answered=kept):
            if saved:
                saved.log.add({keys[i]: answer for i, answer in batch.items()})
            bar.update(sum(i not in kept for i in batch))  # a batch partly on file is run whole, counted once
            for i, answer in batch.items():
                answers[i] = answer
    return [answer_in(tokenizer, answer) for answer in answers]
