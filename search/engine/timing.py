"""Per-stage wall times of a run beside each stage's floor, kept in ``RUN_DIR/summary.json``.

A stage's floor is the arithmetic it cannot avoid: for fits (search trials, the
retrain), the epochs it trained times each fit's steadiest epoch (what an epoch
costs once its step is traced and its data are warm); for evaluate, the final
model's forward passes over the test films and the stress test's renderings of
them, at the fastest batch's rate; for export, the test pass alone. Wall time over floor is
what tracing, building, saving and Python cost on top. Each stage records itself
when it finishes, so a stage re-run alone updates its own line.
"""

from __future__ import annotations

import time

from cxr_tuner.data import files
from cxr_tuner.data.errors import UserError
from cxr_tuner.search.engine.layout import SPLIT_STAMP, RunLayout

STAGES = ("data", "extraction", "search", "retrain", "final model", "evaluate", "export")


class EpochClock:
    """Sums the floor of the fits it watches: epochs run times each fit's fastest epoch.

    ``callback()`` gives a Keras callback for one fit; the clock itself keeps the
    running totals across fits (seeds, variants, folds, trials).
    """

    def __init__(self):
        self.floor_seconds = 0.0
        self.epochs = 0
        self.fits = 0

    def callback(self):
        import keras  # here: importing this module must not load TensorFlow

        clock, durations, started = self, [], []

        class _Epochs(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                durations.clear()

            def on_epoch_begin(self, epoch, logs=None):
                started.append(time.perf_counter())

            def on_epoch_end(self, epoch, logs=None):
                durations.append(time.perf_counter() - started[-1])

            def on_train_end(self, logs=None):
                if durations:
                    clock.floor_seconds += len(durations) * min(durations)
                    clock.epochs += len(durations)
                    clock.fits += 1

        return _Epochs()

    def floor(self) -> dict | None:
        """The record's floor entry, or None when no epoch was watched."""
        if not self.fits:
            return None
        return {"seconds": self.floor_seconds,
                "what": f"{self.epochs} epochs of {self.fits} fits at each fit's fastest epoch"}


class BatchClock:
    """The floor of the forward passes it watches: every film at the rate of the fastest batch.

    What a batch costs once its predict step is traced and with nothing else running: the
    evaluation overlaps its passes with drawing, so their wall time is not their arithmetic.
    ``callback()`` gives a Keras callback for one ``predict``.
    """

    def __init__(self):
        self.films = 0
        self.per_film = float("inf")

    def callback(self):
        import keras  # here: importing this module must not load TensorFlow

        clock, started = self, []

        class _Batches(keras.callbacks.Callback):
            def on_predict_batch_begin(self, batch, logs=None):
                started.append(time.perf_counter())

            def on_predict_batch_end(self, batch, logs=None):
                films = len(keras.tree.flatten(logs["outputs"])[0])
                clock.films += films
                clock.per_film = min(clock.per_film, (time.perf_counter() - started[-1]) / films)

        return _Batches()

    @property
    def seconds(self) -> float:
        return self.films * self.per_film if self.films else 0.0


def record(layout: RunLayout, stage: str, seconds: float, floor: dict | None = None, **details) -> None:
    """Writes ``stage``'s wall time (and floor, ``{"seconds", "what"}``) into ``summary.json``.

    Entries of another split than the current one are dropped: they describe a run
    that was replaced.
    """
    digest = layout.split_digest()
    summary = _read(layout)
    if summary.get(SPLIT_STAMP) != digest:
        summary = {SPLIT_STAMP: digest, "stages": {}}
    summary["stages"][stage] = {"seconds": float(seconds), "floor": floor, **details}
    files.write_json(layout.summary, summary)


def stages(layout: RunLayout) -> dict:
    """The current split's stage records, in the job's order."""
    summary = _read(layout)
    if not layout.split.is_file() or summary.get(SPLIT_STAMP) != layout.split_digest():
        return {}
    found = summary.get("stages", {})
    return {name: found[name] for name in STAGES if name in found}


def stage_lines(layout: RunLayout) -> list[str]:
    """One line per recorded stage: wall time, floor and their ratio (or why there is no floor)."""
    found = stages(layout)
    if not found:
        return []
    lines = ["  stages (wall time; floor = unavoidable arithmetic; summary.json):"]
    for name, entry in found.items():
        floor = entry.get("floor") or {}
        if floor.get("seconds"):
            ratio = entry["seconds"] / floor["seconds"]
            text = f"floor {floor['seconds']:.1f} s ({floor['what']}), {ratio:.1f}x"
        else:
            text = entry.get("note", "no floor measured")
        lines.append(f"    {name:<12} {entry['seconds']:7.1f} s  {text}")
    return lines


def _read(layout: RunLayout) -> dict:
    if not layout.summary.is_file():
        return {}
    try:
        found = files.read_json(layout.summary, "it is rewritten by the next stage")
    except UserError:  # a damaged timing record is replaced, never a reason to stop a stage
        return {}
    return found if isinstance(found, dict) and isinstance(found.get("stages"), dict) else {}

