"""The data stage of a run: files -> split.csv + decoded cache -> tf.data per split.

Reads only what the user pointed at (or the demo data it writes), and writes
``split.csv``, ``skipped.csv`` and the decoded cache into the run directory. On
a resumed run the saved split is reused as it is.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from data import audit, cache, manifest, pipeline, split, synthetic
from data.errors import UserError
from data.weights import class_weights
from search.config import RunConfig

SPLITS = ("train", "val", "test")


@dataclasses.dataclass
class RunData:
    """Decoded images of a run with their split and class indices.

    Attributes:
        config: The run's config, with class names, weights and counts filled in.
        images: uint8 array (N, size, size, 1), one row per used image.
        examples: The used images' manifest entries, same order.
        splits: "train", "val" or "test" per image.
        labels: Class index per image, into ``config.class_names``.
    """

    config: RunConfig
    images: np.ndarray
    examples: list
    splits: np.ndarray
    labels: np.ndarray

    def indices(self, name: str) -> np.ndarray:
        """Row indices of split ``name``."""
        return np.flatnonzero(self.splits == name)

    def sample_weights(self, name: str) -> np.ndarray:
        """The class weight of each image of split ``name``, float32, in row order."""
        names = self.config.class_names
        return np.array([self.config.class_weights[names[i]] for i in self.labels[self.indices(name)]],
                        "float32")

    def dataset(self, name: str, shuffle: bool = False, augment: bool = False, seed: int | None = None):
        """A batched tf.data pipeline of ``(image, one-hot, class weight)`` for a split (``seed``: the run's)."""
        idx = self.indices(name)
        # rows= gathers batches from the memmap instead of copying the split into RAM.
        return pipeline.make_dataset(
            self.images, self.labels[idx], self.sample_weights(name), len(self.config.class_names),
            self.config.batch_size,
            shuffle=shuffle, seed=self.config.seed if seed is None else seed, augment=augment, rows=idx)


def data_root(config: RunConfig) -> Path:
    """The user's data, or the synthetic demo set written into the run directory."""
    if config.data is not None:
        return Path(config.data)
    return synthetic.write_demo_dataset(config.layout.demo_data)


def prepare(config: RunConfig, progress: bool = True) -> RunData:
    """Loads or creates the run's split and decodes its images through the cache.

    Returns:
        The run's data; ``config`` in it carries class names, class weights
        (computed on the training split) and the image counts.
    """
    layout = config.layout
    split_csv = layout.split
    if split_csv.is_file() and not config.overwrite:
        examples, splits = split.load_split(split_csv)
        decoded = cache.load_decoded(examples, config.image_size, layout.cache, progress)
        if decoded.skipped:
            raise UserError(
                f"{len(decoded.skipped)} image(s) of {split_csv} can no longer be read "
                f"(first: {decoded.skipped[0].path}: {decoded.skipped[0].reason}); "
                "restore them or start over with --overwrite.")
        found = config.counts.get("found", len(examples))
    else:
        examples = manifest.discover(data_root(config))
        decoded = cache.load_decoded(examples, config.image_size, layout.cache, progress)
        cache.write_skipped_csv(layout.skipped, decoded.skipped)
        _check_every_class_readable(examples, decoded, layout.skipped)
        splits, report = _leak_free_split(config, decoded)
        split.save_split(split_csv, decoded.examples, splits)
        audit.write_audit_csv(layout.audit, report)
        config = config.replace(audit=report.counts())
        found = len(examples)
    return _run_data(config, decoded, np.asarray(splits), found)


def _check_every_class_readable(examples, decoded, skipped_csv: Path) -> None:
    """A class whose files all failed to decode would silently vanish from the model."""
    readable = set(manifest.class_names(decoded.examples))
    label_of = {example.path: example.label for example in examples}
    for name in manifest.class_names(examples):
        if name not in readable:
            failed = [item for item in decoded.skipped if label_of[item.path] == name]
            raise UserError(
                f"Class {name} has no readable image: all {len(failed)} of its files were skipped "
                f"(e.g. {failed[0].path}: {failed[0].reason}; all in {skipped_csv}). Replace them "
                "with PNG, JPEG or DICOM files that open, or remove that class folder.")


def _leak_free_split(config: RunConfig, decoded):
    """Splits so that no patient and no (near-)duplicate group spans two splits.

    Returns:
        The split per image and the leakage audit of that split (all cross-split
        counts zero by construction; the audit proves it).
    """
    examples = decoded.examples
    prints = audit.fingerprints([e.path for e in examples], decoded.images)  # once for both uses
    duplicates = audit.duplicate_groups([e.path for e in examples], prints=prints)
    groups = audit.merge_groups([e.group for e in examples], duplicates)
    splits = split.split_by_group([e.label for e in examples], groups, config.fractions, config.seed)
    return splits, audit.audit(examples, splits=splits, prints=prints)


def _run_data(config: RunConfig, decoded, splits: np.ndarray, found: int) -> RunData:
    names = tuple(manifest.class_names(decoded.examples))
    labels = np.array([names.index(e.label) for e in decoded.examples])
    train_labels = [e.label for e, s in zip(decoded.examples, splits) if s == "train"]
    counts = {"found": found, "used": len(decoded.examples), "skipped": found - len(decoded.examples)}
    counts.update({s: int((splits == s).sum()) for s in SPLITS})
    config = config.replace(class_names=names, class_weights=class_weights(train_labels, names),
                            counts=counts)
    return RunData(config, decoded.images, decoded.examples, splits, labels)
