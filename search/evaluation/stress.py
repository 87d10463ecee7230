"""The acquisition-shift stress test: the final model on each `data.shift` family's re-rendering of the evaluated films.

Part of every evaluation (the test split and each external set). One batched forward pass
per family, no Grad-CAM; the task scores each pass (`Task.stress_figures`), so classes and
findings get the same table.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from cxr_tuner.data import shift
from cxr_tuner.search.engine.task_base import Films, Task
from cxr_tuner.search.figures.shift_report import worst_family

CHUNK = 1024  # films rendered at a time: memory stays bounded on a large test split


def stress_test(predict: Callable[[np.ndarray], np.ndarray], task: Task, films: Films, probs: np.ndarray, names,
                metrics: dict, seed: int) -> dict:
    """``metrics.json``'s ``stress`` entry: the task's figures as filmed and per family, and the worst family.

    Args:
        predict: The final model's probabilities of a batch of uint8 films.
        probs: Its probabilities of ``films`` as filmed (already computed).
        metrics: The set's figures so far (a task may read its thresholds there).
        seed: The run's seed; film ``i`` is rendered with id ``i``, so a film's rendering is the same in any run.
    """
    started = time.perf_counter()
    ids = np.arange(len(films.images))
    families = {}
    for family in shift.FAMILIES:
        parts = [predict(shift.render(films.images[i:i + CHUNK], family, seed, ids[i:i + CHUNK]))
                 for i in range(0, len(ids), CHUNK)]
        shifted = np.concatenate(parts).astype(np.float64)
        families[family] = {"description": shift.DESCRIPTIONS[family],
                            **task.stress_figures(films, shifted, names, metrics, seed)}
    return {"n": int(len(ids)), "seed": int(seed), "figures": list(task.stress_names),
            "as_filmed": task.stress_figures(films, probs, names, metrics, seed),
            "families": families, "worst_family": worst_family(families),
            "seconds": time.perf_counter() - started}
