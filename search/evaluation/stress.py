"""The acquisition-shift stress test: the final model on each `data.shift` family's re-rendering of the evaluated films.

Part of every evaluation (the test split and each external set). No Grad-CAM; the task
scores each family's pass (`Task.stress_figures`), so classes and findings get the same
table. Every family's rendering of a chunk of films goes through the model in one call
(one traced predict, full batches), while a background thread renders the next chunk.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from cxr_tuner.data import shift
from cxr_tuner.search.engine.task_base import Films, Task
from cxr_tuner.search.figures.shift_report import worst_family

CHUNK = 1024  # renderings predicted at a time (all families of CHUNK // 8 films): memory stays bounded


def stress_test(predict: Callable[[np.ndarray], np.ndarray], task: Task, films: Films, probs: np.ndarray, names,
                metrics: dict, seed: int, chunk: int = CHUNK) -> tuple[dict, float]:
    """``metrics.json``'s ``stress`` entry: the task's figures as filmed and per family, and the worst family.

    Args:
        predict: The final model's probabilities of a batch of uint8 films.
        probs: Its probabilities of ``films`` as filmed (already computed).
        metrics: The set's figures so far (a task may read its thresholds there).
        seed: The run's seed; film ``i`` is rendered with id ``i``, so a film's rendering is the same in any run.
        chunk: Renderings per call of ``predict``.

    Returns:
        The entry, and the seconds spent in ``predict`` (the forward passes, one per family).
    """
    started = time.perf_counter()
    shifted, forward = _shifted_probabilities(predict, films.images, seed, max(1, chunk // len(shift.FAMILIES)))
    families = {family: {"description": shift.DESCRIPTIONS[family],
                         **task.stress_figures(films, shifted[family], names, metrics, seed)}
                for family in shift.FAMILIES}
    return {"n": int(len(films.images)), "seed": int(seed), "figures": list(task.stress_names),
            "as_filmed": task.stress_figures(films, probs, names, metrics, seed),
            "families": families, "worst_family": worst_family(families),
            "seconds": time.perf_counter() - started}, forward


def _shifted_probabilities(predict, images, seed: int, step: int) -> tuple[dict, float]:
    """Per family, ``predict`` of its rendering of every film; ``step`` films (all families) per call."""
    starts = list(range(0, len(images), step))
    parts, forward = [], 0.0
    with ThreadPoolExecutor(1) as pool:  # PIL and numpy let go of the GIL while TensorFlow predicts
        pending = pool.submit(_render_all, images, seed, starts[0], step) if starts else None
        for i in range(len(starts)):
            rendered = pending.result()
            if i + 1 < len(starts):
                pending = pool.submit(_render_all, images, seed, starts[i + 1], step)
            begun = time.perf_counter()
            found = np.asarray(predict(rendered), np.float64)
            parts.append(found.reshape(len(shift.FAMILIES), -1, *found.shape[1:]))
            forward += time.perf_counter() - begun
    return {family: np.concatenate([part[k] for part in parts]) for k, family in enumerate(shift.FAMILIES)}, forward


def _render_all(images, seed: int, start: int, step: int) -> np.ndarray:
    """Films ``start:start + step`` rendered by every family, family after family."""
    ids = np.arange(start, min(start + step, len(images)))
    films = images[start:start + step]
    return np.concatenate([shift.render(films, family, seed, ids) for family in shift.FAMILIES])
