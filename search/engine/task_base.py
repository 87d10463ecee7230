"""What a task answers: everything that differs between single-label classes and multi-label findings.

A task is chosen once from the run's config (`search.engine.task.task_of`); the stages
ask it and never test which task they run. A new task (a severity score, ordinal
grades) is one more subclass, not a branch in each stage.
"""

from __future__ import annotations

import abc
import dataclasses
from pathlib import Path

import numpy as np

FITTED_ON_FOLDS = "out-of-fold predictions on train+val (--folds), never the test split"


class Task(abc.ABC):
    """The questions a stage asks about the run's labels and outputs.

    Attributes:
        name: The task as ``config.json`` and ``metrics.json`` name it.
        objective: The Keras metric the search ranks on and the retrain stops on.
        stress_names: How the stress table names `stress_figures`' two figures (headline, worst).
    """

    name: str
    objective: str
    stress_names: tuple[str, str]

    # The data stage.
    @abc.abstractmethod
    def demo_root(self, layout) -> Path:
        """Writes the task's synthetic demo set into the run directory; returns what ``--data`` would be."""

    @abc.abstractmethod
    def check_decoded(self, examples, decoded, skipped_csv: Path) -> None:
        """Raises `UserError` when decoding lost what the task cannot do without."""

    @abc.abstractmethod
    def ignored_columns(self, root: Path) -> list[str]:
        """The label file's columns the run does not read (said once, kept in ``data.json``)."""

    @abc.abstractmethod
    def split(self, config, examples, groups, table) -> tuple[np.ndarray, dict]:
        """The split per film (no group in two splits) and what to add to the labels' record."""

    @abc.abstractmethod
    def source_audit(self, examples, ignored: list[str], label_record: dict) -> dict:
        """Whether the source (site, view) tells the label: ``data.json``'s ``sources``."""

    @abc.abstractmethod
    def encode(self, config, examples, splits: np.ndarray, label_record: dict):
        """``(config with class names and loss weights, labels)`` for the used films."""

    @abc.abstractmethod
    def sample_weights(self, config, labels: np.ndarray) -> np.ndarray:
        """Each film's weight in the loss, float32 (ones where the loss weighs entries itself)."""

    @abc.abstractmethod
    def objective_value(self, config, labels: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> float:
        """The objective of saved probabilities: what the search ranks on, in NumPy."""

    @abc.abstractmethod
    def fold_split(self, config, labels: np.ndarray, groups) -> list[tuple[np.ndarray, np.ndarray]]:
        """``config.folds`` grouped (kept, held out) index pairs into ``labels``."""

    @abc.abstractmethod
    def data_lines(self, data) -> list[str]:
        """The data stage's lines about each class or finding: counts per split and loss weights."""

    # The search.
    @abc.abstractmethod
    def findings(self, config):
        """The head's `hypermodels.findings.Findings`, or None for a softmax head."""

    @abc.abstractmethod
    def run_metrics(self, config) -> dict[str, str]:
        """The metrics HParams shows, the objective first: ``{name: display name}``."""

    @abc.abstractmethod
    def chance_text(self, config) -> str:
        """The objective of a model that knows nothing, as said beside a trial's score."""

    # The final model.
    @abc.abstractmethod
    def parse_points(self, text: str | None, names):
        """``--operating-point`` read for this task; bad input raises `UserError` before any work."""

    @abc.abstractmethod
    def calibrate(self, y: np.ndarray, raw: np.ndarray, first: np.ndarray, names, points, seed: int,
                  basis: str, groups=None):
        """Temperature(s) and thresholds chosen on ``basis`` probabilities (the checks' folds keep ``groups``
        whole): a `Calibrated`."""

    @abc.abstractmethod
    def final_card(self, record: dict) -> dict:
        """The model card's entries for a final model from its ``final.json`` record."""

    # Evaluation: figures, pictures to draw, Grad-CAM pages and report text, from the test (or an external) set.
    @abc.abstractmethod
    def check_external(self, config, data: str, names):
        """Reads an external set's labels (no image) against the run's ``names``; raises `UserError` when they
        do not fit. Returns what `external_films` decodes."""

    @abc.abstractmethod
    def external_films(self, config, data: str, log) -> "Films":
        """An external labelled set read as the run's classes or findings."""

    @abc.abstractmethod
    def test_metrics(self, films: "Films", probs: np.ndarray, names, record: dict | None, seed: int) -> dict:
        """``metrics.json``'s figures of ``probs`` on ``films`` (``record``: ``final.json``, None before one)."""

    @abc.abstractmethod
    def stress_figures(self, films: "Films", probs: np.ndarray, names, metrics: dict, seed: int) -> dict:
        """One rendering's row of the stress test: ``headline`` (the task's headline figure, with its CI) and
        ``worst`` (``{"of": class or finding, "value"}``, the one that fares worst); ``metrics``: the set's."""

    @abc.abstractmethod
    def final_figures(self, record: dict, films: "Films", probs, raw, single, names, metrics: dict):
        """``(metrics entries, {heading: markdown}, {caption: picture})`` of an assembled final model."""

    @abc.abstractmethod
    def prediction_table(self, films: "Films", probs: np.ndarray, names, metrics: dict) -> tuple[list, list]:
        """``predictions.csv``: its header and one row per film."""

    @abc.abstractmethod
    def pictures(self, films: "Films", probs: np.ndarray, names, metrics: dict) -> dict:
        """``{caption: picture}`` of the figures (see `search.evaluation.report` for the kinds)."""

    @abc.abstractmethod
    def gallery_pages(self, films: "Films", probs: np.ndarray, names, metrics: dict) -> list["Page"]:
        """The Grad-CAM pages: which films, explaining which output, titled how."""

    @abc.abstractmethod
    def energy_outputs(self, probs: np.ndarray) -> np.ndarray | None:
        """Per film, the output whose heatmap the chest-energy check measures; None: no such check."""

    @abc.abstractmethod
    def energy_figures(self, shares: np.ndarray, films: "Films", probs: np.ndarray, names, uniform: float):
        """``(shortcuts.json's energy entry, the page of the films with least energy in the chest)``."""

    @abc.abstractmethod
    def probe_rows(self, labels: np.ndarray, seed: int, most: int) -> np.ndarray:
        """The training films (indices into ``labels``) a fresh probe head learns from, at most ``most``."""

    @abc.abstractmethod
    def probe_figures(self, films: "Films", hidden, only, features, train_features, train_labels, names,
                      seed: int) -> dict:
        """The chest-hidden probe's figures from the model's outputs and features (`search.evaluation.probe`)."""

    @abc.abstractmethod
    def per_source(self, films: "Films", probs: np.ndarray, names) -> dict:
        """Figures per source (site, view); {} without sources."""

    @abc.abstractmethod
    def report_parts(self, metrics: dict) -> list[str]:
        """report.md's opening parts under the title: the figures' tables and how to read them."""

    @abc.abstractmethod
    def report_sections(self, checks: dict, out: Path, labels: dict, config) -> dict[str, str]:
        """report.md's sections of the shortcut checks (and the labels' record): ``{heading: markdown}``."""

    @abc.abstractmethod
    def verdict(self, sets: list[tuple[str, dict]], checks: dict) -> str:
        """The verdict opening the run's report (test split beside external sets); "" for none."""

    @abc.abstractmethod
    def comparison_cells(self, metrics: dict) -> dict[str, str]:
        """A set's headline figures as the report's table of evaluated sets shows them: ``{column: text}``."""

    @abc.abstractmethod
    def report_title(self, winner: str) -> str:
        """report.md's title."""

    @abc.abstractmethod
    def gallery_text(self) -> tuple[str, str]:
        """The Grad-CAM section's heading and the sentence under it."""

    @abc.abstractmethod
    def opening_line(self, winner: str, films: "Films", external: bool, names) -> str:
        """The evaluate stage's first line: what is evaluated on what."""

    @abc.abstractmethod
    def closing_lines(self, metrics: dict, checks: dict, out: Path) -> list[str]:
        """The evaluate stage's last lines: the probe's figures when run, the headline figures, the report."""

    # Delivery.
    @abc.abstractmethod
    def decision_rule(self, record: dict | None):
        """What decides a film, from the model card or ``final.json`` (None: no record, the task's default)."""

    @abc.abstractmethod
    def decide(self, row: np.ndarray, names, rule) -> dict:
        """One film's answer as predict prints it: ``decision`` (what the card prescribes), ``decided_by`` ..."""

    @abc.abstractmethod
    def output_meaning(self) -> str:
        """What the exported model's output holds, for the model card."""

    @abc.abstractmethod
    def headline_metrics(self, metrics: dict) -> dict:
        """The test figures a model card carries, from ``metrics.json``."""

    @abc.abstractmethod
    def headline_lines(self, metrics: dict, title: str = "test split") -> list[str]:
        """The job summary's lines of a set's figures (``title``: which set), from its ``metrics.json``."""


@dataclasses.dataclass(frozen=True)
class Films:
    """A labelled set to evaluate on: decoded films, their labels (class index or multi-hot row), where from.

    ``groups``: each film's patient / near-duplicate group, what a bootstrap resamples.
    """

    images: np.ndarray
    labels: np.ndarray
    paths: list[str]
    sources: list[str]
    groups: list[str]


@dataclasses.dataclass(frozen=True)
class Page:
    """One Grad-CAM page of the report: ``rows`` of the films, each explained for ``outputs[i]``.

    ``file`` is under the report's ``gradcam/`` folder; ``box`` draws the chest box; ``listed``: the
    Grad-CAM section links it (the shortcut checks link the others).
    """

    caption: str
    file: str
    heading: str
    rows: np.ndarray
    outputs: np.ndarray
    titles: list[str]
    box: bool = False
    listed: bool = True


@dataclasses.dataclass(frozen=True)
class Calibrated:
    """What a task chose on validation for the final model.

    Attributes:
        temperature: What the model's calibration layer applies (a float, or one per finding).
        record: Entries of ``final.json`` the task adds (temperature check, operating points).
        lines: What the final stage prints about the choice, once the model is saved.
    """

    temperature: object
    record: dict
    lines: list[str]
