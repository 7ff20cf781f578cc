"""Every evaluation task by name, in the order reports show them: the one list a new task is added to.

Task names, settings, summary rows, setting titles and figures are all read from here; each task module declares its
own `Task` record (headpatch.evaluation.tasks.base).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from headpatch.errors import HeadpatchError
from headpatch.evaluation.tasks import copy, mdqa, niah, ppl, retrieval
from headpatch.evaluation.tasks.base import Task

TASKS: dict[str, Task[Any]] = {
    task.name: task for task in (copy.TASK, niah.TASK, niah.TASK_2, mdqa.TASK, ppl.TASK, retrieval.TASK)}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)
DEFAULT_TASKS: tuple[str, ...] = tuple(name for name, task in TASKS.items() if task.default)
# each task's settings by mode, "quick" or "full": what --quick chooses between
SETTINGS: dict[str, dict[str, Any]] = {name: {"quick": task.quick, "full": task.full} for name, task in TASKS.items()}


def check_tasks(tasks: str | Sequence[str]) -> list[str]:
    """Task names from a comma list or a sequence, checked, in the canonical order."""
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else [t.strip() for t in tasks]
    names = [t for t in names if t]
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        given = ", ".join(unknown) or "(none given)"
        raise HeadpatchError(f"unknown task(s) {given}; choose from {', '.join(TASK_NAMES)}")
    return [t for t in TASK_NAMES if t in names]


def setting_for(task: str, quick: bool) -> Any:
    """The quick or full setting of a task."""
    return SETTINGS[task]["quick" if quick else "full"]
