"""The one record an evaluation computes; `search.evaluation.report.write` renders all of it."""

from __future__ import annotations

import dataclasses
from concurrent.futures import Future

import numpy as np

from cxr_tuner.search.engine.task_base import Page


@dataclasses.dataclass
class Evaluation:
    """Everything the report shows about one evaluated set, computed before anything is written.

    Attributes:
        title: report.md's title.
        metrics: ``metrics.json`` (the task's figures, the final model's, where they come from, the stress
            test's and, for the test split scored with external sets, theirs under ``external``).
        predictions: ``predictions.csv``'s header and rows.
        history: The rank-1 winner's training history (the training curves).
        pictures: ``{caption: picture}``: what to draw (``kind`` and its data) into which ``file``.
        images: The films the Grad-CAM pages show.
        pages: The Grad-CAM pages, each with ``maps[page.file]`` its heatmaps.
        maps: ``{page file: heatmaps of its rows}``.
        gallery: The Grad-CAM section's heading and lead sentence.
        checks: ``shortcuts.json``: per-source figures, the probe, the chest energy.
        parts: report.md's opening parts (the task's tables, the stress test's, the external sets').
        sections: report.md's closing sections after the Grad-CAM one, ``{heading: markdown}``.
        test_split: Whether this is the run's test split (its report opens with the verdict).
        pending: Checks still running (the probe) while the pictures are drawn: a future of the whole
            ``checks`` and ``sections``, which `settle` puts in.
    """

    title: str
    metrics: dict
    predictions: tuple[list, list]
    history: dict
    pictures: dict
    images: np.ndarray
    pages: list[Page]
    maps: dict
    gallery: tuple[str, str]
    checks: dict
    parts: list[str]
    sections: dict
    test_split: bool
    pending: Future | None = None

    def settle(self) -> None:
        """Waits for the pending checks and puts them into the record."""
        if self.pending is not None:
            found = self.pending.result()
            self.checks, self.sections, self.pending = found["checks"], found["sections"], None
