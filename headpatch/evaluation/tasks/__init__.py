"""The evaluation tasks by name."""

from headpatch.evaluation.tasks import copy, mdqa, niah, ppl, retrieval
from headpatch.evaluation.tasks.base import Metric, Task, TaskRun, TaskSkipped

TASKS: dict[str, Task] = {
    "copy": Task(copy.evaluate, copy.headline),
    "niah": Task(niah.evaluate, niah.headline),
    "mdqa": Task(mdqa.evaluate, mdqa.headline),
    "ppl": Task(ppl.evaluate, ppl.headline),
    "retrieval": Task(retrieval.evaluate, retrieval.headline),
}

__all__ = ["TASKS", "Metric", "Task", "TaskRun", "TaskSkipped"]
