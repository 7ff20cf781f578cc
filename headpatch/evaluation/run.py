"""Run the evaluation tasks on a model and the model it is compared with, on the same inputs."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from headpatch._version import library_versions
from headpatch.evaluation.models import identity, load_reference
from headpatch.evaluation.registry import DEFAULT_TASKS, TASKS, check_tasks, setting_for
from headpatch.evaluation.saved_answers import AnswerLog, ModelAnswers, model_answers
from headpatch.evaluation.tasks.base import Metric, TaskRun, TaskSkipped
from headpatch.loading import LoadedModel, load_model
from headpatch.stats import paired_change

FORMAT_VERSION = 2  # 2: summary rows carry `paired` (interval, test, detectable change)
# "base" is the model compared against, "patched" the model under evaluation; a lone model is just "model"
COMPARED_ROLES = ("base", "patched")
ALONE_ROLE = "model"


def _run_task(name: str, setting: Any, models: Mapping[str, LoadedModel], seed: int, show_progress: bool,
              saved: Mapping[str, ModelAnswers | None]) -> tuple[dict[str, Any], dict[str, float]]:
    """One task on every model: its result (or why it was skipped) and the seconds each model took."""
    results, seconds = {}, {}
    for role, loaded in models.items():
        began = time.perf_counter()
        try:
            results[role] = TASKS[name].run(loaded, setting, TaskRun(role, models, seed, show_progress, saved[role]))
        except TaskSkipped as skipped:
            return {"setting": asdict(setting), "skipped": str(skipped)}, seconds
        seconds[role] = round(time.perf_counter() - began, 2)
    return {"setting": asdict(setting), "models": results}, seconds


def _change(row: dict[str, Any]) -> float | None:
    values = row["values"]
    if not all(role in values for role in COMPARED_ROLES):
        return None
    base, patched = values["base"], values["patched"]
    if row["relative"]:
        return patched / base - 1 if base else None
    return patched - base


def _row(metric: Metric, seed: int) -> dict[str, Any]:
    """A summary row: the metric, its change, and where it has per-item values for both models the paired
    comparison (interval, exact test, detectable change)."""
    row = metric.as_dict()
    row["change"] = _change(row)
    items = metric.per_item or {}
    if all(role in items for role in COMPARED_ROLES):
        row["paired"] = paired_change(items["base"], items["patched"], metric.relative, metric.higher_is_better,
                                      metric.log_items, seed).as_dict()
    return row


def run_eval(
    model: str, against: str | None = None, tasks: str | Sequence[str] = DEFAULT_TASKS, quick: bool = False,
    seed: int = 0, dtype: str = "float32", device: str = "cpu", show_progress: bool = True,
    settings: Mapping[str, Any] | None = None, answer_log: AnswerLog | None = None,
) -> dict[str, Any]:
    """Evaluate `model` (and the model it is compared with) on `tasks`; plain data, ready for `write_report`.

    `against` None compares with the source named in the model's headpatch metadata when that loads, else evaluates
    the model alone; "none" never compares. `settings` replaces the quick/full setting of the tasks it names.
    `answer_log` keeps generated answers as they come and supplies those an interrupted run with the same models and
    settings left; the results are the same either way.
    """
    names = check_tasks(tasks)
    chosen = {name: (settings or {}).get(name) or setting_for(name, quick) for name in names}
    began = time.perf_counter()
    loaded = load_model(model, dtype, device)
    reference, comparison = load_reference(loaded, against, dtype, device)
    models = dict(zip(COMPARED_ROLES, (reference, loaded))) if reference is not None else {ALONE_ROLE: loaded}
    identities = {role: identity(m) for role, m in models.items()}
    saved = {role: model_answers(answer_log, models[role], who["weights"]["sha256"], dtype)
             for role, who in identities.items()}
    task_results, seconds, summary = {}, {}, []
    for name in names:
        task_results[name], seconds[name] = _run_task(name, chosen[name], models, seed, show_progress, saved)
        if "models" in task_results[name]:
            summary += [_row(metric, seed) for metric in TASKS[name].headline(task_results[name]["models"])]
    return {
        "format_version": FORMAT_VERSION,
        "versions": library_versions(),
        "run": {"quick": quick, "seed": seed, "dtype": dtype, "device": device, "tasks": names,
                "settings_replaced": sorted(set(settings or {}) & set(names))},
        "comparison": comparison,
        "models": identities,
        "summary": summary,
        "tasks": task_results,
        "seconds": {"tasks": seconds, "total": round(time.perf_counter() - began, 2)},
    }
