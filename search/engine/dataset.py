"""The data stage of a run: files -> split.csv + decoded cache -> tf.data per split.

Reads only what the user pointed at (or the demo data it writes), and writes
``split.csv``, ``skipped.csv`` and the decoded cache into the run directory. On
a resumed run the saved split is reused as it is.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from cxr_tuner.data import audit, cache, files, labels as label_files, pipeline, split
from cxr_tuner.data.errors import UserError
from cxr_tuner.search.engine.config import RunConfig
from cxr_tuner.search.engine.task import Task, task_named, task_of

FIT = "fit"  # train and val together: what --folds divides, and what a final model with folds trains on


@dataclasses.dataclass(frozen=True)
class DataFindings:
    """What the data stage found, saved as ``data.json`` beside the settings.

    Attributes:
        counts: Images found, used and skipped, and per split.
        audit: The leakage audit's counts for the split.
        sources: The source audit (`data.sources`): ``audit`` (its record or None), the
            printed ``lines`` and the manifest's ``ignored_columns``.
        fractions: The split's shares of the images against those asked for
            (`data.split.fraction_check`), with a ``warning`` line when far off.
        labels: What the label file gave: ``task``, ``layout``, ``found`` (every label it
            names), ``kept`` (the findings the model answers), ``dropped`` and ``lines`` (said
            once, kept for the report), ``positives`` per finding and split (films and groups).
    """

    counts: dict[str, int]
    audit: dict[str, int]
    sources: dict = dataclasses.field(default_factory=dict)
    fractions: dict = dataclasses.field(default_factory=dict)
    labels: dict = dataclasses.field(default_factory=dict)

    def save(self, layout) -> None:
        """Writes ``data.json`` whole."""
        files.write_json(layout.findings, dataclasses.asdict(self))

    @classmethod
    def load(cls, layout) -> "DataFindings | None":
        """The saved findings, or None for a run that has none (made before they were saved apart)."""
        if not layout.findings.is_file():
            return None
        saved = files.read_json(layout.findings, "start over with --overwrite")
        return cls(counts=dict(saved.get("counts", {})), audit=dict(saved.get("audit", {})),
                   sources=dict(saved.get("sources", {})), fractions=dict(saved.get("fractions", {})),
                   labels=dict(saved.get("labels", {})))


@dataclasses.dataclass
class RunData:
    """Decoded images of a run with their split and class indices.

    Attributes:
        config: The run's config, with class names and weights filled in.
        images: uint8 array (N, size, size, 1), one row per used image.
        examples: The used images' manifest entries, same order.
        splits: "train", "val" or "test" per image.
        labels: Class index per image, into ``config.class_names``; for findings a float
            ``(N, L)`` multi-hot row per image (1 / 0 / -1 masked).
        findings: Counts and audit of the data stage.
    """

    config: RunConfig
    images: np.ndarray
    examples: list
    splits: np.ndarray
    labels: np.ndarray
    findings: DataFindings

    _folds: list | None = dataclasses.field(default=None, init=False, repr=False)

    @property
    def task(self) -> Task:
        """The run's task (`search.engine.task`)."""
        return task_of(self.config)

    def indices(self, name: str) -> np.ndarray:
        """Row indices of split ``name``; ``"fit"``: train and val together (what folds divide)."""
        if name == FIT:
            return np.flatnonzero((self.splits == "train") | (self.splits == "val"))
        return np.flatnonzero(self.splits == name)

    def sample_weights(self, name) -> np.ndarray:
        """The class weight of each image of split ``name`` (or of the rows ``name``), float32, in row order.

        Findings weigh each (film, finding) entry inside the loss instead: ones here.
        """
        rows = self.indices(name) if isinstance(name, str) else name
        return self.task.sample_weights(self.config, self.labels[rows])

    def objective_value(self, rows, probs: np.ndarray) -> float:
        """The run's class-weighted loss of ``probs`` on ``rows``: what the search ranks on, from saved probabilities."""
        return self.task.objective_value(self.config, self.labels[rows], probs, self.sample_weights(rows))

    def folds(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """``config.folds`` (train rows, validation rows) of train+val, grouped as the split is; test is not in them.

        Raises:
            UserError: A class has fewer groups in train+val than folds.
        """
        if self._folds is None:
            rows = self.indices(FIT)
            groups = audit.leak_groups([self.examples[i] for i in rows], self.images[rows])
            pairs = self.task.fold_split(self.config, self.labels[rows], groups)
            self._folds = [(rows[kept], rows[held_out]) for kept, held_out in pairs]
        return self._folds

    def dataset(self, name, shuffle: bool = False, augment: bool = False, seed: int | None = None):
        """A batched tf.data pipeline of ``(image, one-hot, class weight)`` for a split or rows (``seed``: the run's)."""
        idx = self.indices(name) if isinstance(name, str) else name
        # rows= gathers batches from the memmap instead of copying the split into RAM.
        return pipeline.make_dataset(
            self.images, self.labels[idx], self.sample_weights(idx), len(self.config.class_names),
            self.config.batch_size,
            shuffle=shuffle, seed=self.config.seed if seed is None else seed, augment=augment, rows=idx)


def data_root(config: RunConfig) -> Path:
    """The user's data, or the synthetic demo set (findings with ``--task multilabel``) written into the run directory."""
    if config.data is not None:
        return Path(config.data)
    return task_of(config).demo_root(config.layout)


def prepare(config: RunConfig, progress: bool = True) -> RunData:
    """Loads or creates the run's split and decodes its images through the cache.

    Returns:
        The run's data; ``config`` in it carries class names and class weights
        (computed on the training split); a new split's findings are saved.
    """
    layout = config.layout
    split_csv = layout.split
    new_split = config.overwrite or not split_csv.is_file()
    if not new_split:
        examples, splits = split.load_split(split_csv)
        decoded = cache.load_decoded(examples, config.image_size, layout.cache, progress)
        if decoded.skipped:
            raise UserError(
                f"{len(decoded.skipped)} image(s) of {split_csv} can no longer be read "
                f"(first: {decoded.skipped[0].path}: {decoded.skipped[0].reason}); "
                "restore them or start over with --overwrite.")
        saved = DataFindings.load(layout)
        found = saved.counts.get("found", len(examples)) if saved else len(examples)
        audit_counts = saved.audit if saved else {}
        source_record = saved.sources if saved else {}
        label_record = saved.labels if saved else {}
    else:
        table = label_files.read(data_root(config), config.task, config.uncertain, config.views or None)
        config = config.replace(task=table.task)
        task = task_of(config)
        examples = table.examples
        decoded = cache.load_decoded(examples, config.image_size, layout.cache, progress)
        cache.write_skipped_csv(layout.skipped, decoded.skipped)
        task.check_decoded(examples, decoded, layout.skipped)
        splits, report, label_record = _leak_free_split(config, decoded, table)
        split.save_split(split_csv, decoded.examples, splits)
        audit.write_audit_csv(layout.audit, report)
        found, audit_counts = len(examples), report.counts()
        source_record = task.source_audit(decoded.examples, task.ignored_columns(data_root(config)), label_record)
    data = _run_data(config, decoded, np.asarray(splits), found, audit_counts, source_record, label_record)
    if new_split:
        data.findings.save(layout)
    return data


def _leak_free_split(config: RunConfig, decoded, table):
    """Splits so that no patient and no (near-)duplicate group spans two splits.

    Findings are stratified over every label at once (iterative stratification), and a
    finding with too few positive groups in some split is dropped, one line each.

    Returns:
        The split per image, the leakage audit of that split (all cross-split counts
        zero by construction; the audit proves it) and the labels' record (`DataFindings.labels`).
    """
    examples = decoded.examples
    prints = audit.fingerprints([e.path for e in examples], decoded.images)  # once for both uses
    groups = audit.leak_groups(examples, decoded.images, prints)
    record = {"task": table.task, "layout": table.layout, "found": list(table.names), "lines": list(table.lines)}
    splits, found = task_of(config).split(config, examples, groups, table)
    record.update(found)
    return splits, audit.audit(examples, splits=splits, prints=prints), record


def _run_data(config: RunConfig, decoded, splits: np.ndarray, found: int, audit_counts: dict,
              source_record: dict, label_record: dict) -> RunData:
    counts = {"found": found, "used": len(decoded.examples), "skipped": found - len(decoded.examples)}
    counts.update({s: int((splits == s).sum()) for s in split.SPLITS})
    fractions = split.fraction_check(splits, config.fractions)
    findings = DataFindings(counts, audit_counts, source_record, fractions, label_record)
    # The labels' record names the task the data stage chose (a run's data.json may predate it).
    task = task_named(label_record.get("task", config.task))
    # Worked out from the split each time (a resumed run's data.json may predate it).
    config, labels = task.encode(config, decoded.examples, splits, label_record)
    return RunData(config, decoded.images, decoded.examples, splits, labels, findings)
