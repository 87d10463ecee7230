"""The run's task, chosen once: `task_of(config)` for a run, `task_named(name)` for a saved record.

``config.task`` is ``auto`` until the data stage has read the labels; until then the run
is treated as single-label (the demo without ``--task multilabel`` is).
"""

from __future__ import annotations

from cxr_tuner.search.engine.multi_label_task import MultiLabel
from cxr_tuner.search.engine.single_label_task import SingleLabel
from cxr_tuner.search.engine.task_base import Calibrated, Task

TASKS: dict[str, Task] = {"multiclass": SingleLabel(), "multilabel": MultiLabel()}

__all__ = ["Calibrated", "TASKS", "Task", "task_named", "task_of"]


def task_named(name: str | None) -> Task:
    """The task a record names (``metrics.json``, ``final.json``, a model card); records without one are single-label."""
    return TASKS.get(name or "multiclass", TASKS["multiclass"])


def task_of(config) -> Task:
    """The task of a run's config."""
    return task_named(config.task)
