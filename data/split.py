"""Train/val/test split, stratified by class and grouped by patient; saved as split.csv.

The groups a run splits by are patients merged with their near-duplicate images
(search.dataset.leak_groups), so the messages here say "near-duplicate or patient groups".
"""

import csv
import math
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from data import files
from data.errors import UserError
from data.manifest import Example

SPLITS = ("train", "val", "test")
# A split share further than this from the one asked for (absolute, 0.05 = 5 points) is warned about:
# groups go whole into one split, so a few large ones can move the shares far.
FRACTION_MARGIN = 0.05
_COLUMNS = ["path", "label", "group", "source", "split"]
_OLD_COLUMNS = ["path", "label", "group", "split"]  # before sources were kept: read, source ""


def split_by_group(
    labels: Sequence[str], groups: Sequence[str], fractions=(0.7, 0.15, 0.15), seed: int = 0
) -> list[str]:
    """Assign "train", "val" or "test" to each item; no group is ever in two splits.

    Stratified by class with scikit-learn's StratifiedGroupKFold: test is one fold of
    round(1/test_fraction) folds, val one fold of the rest. The fractions are therefore
    met to within a fold's size. An empty group is a group of its own.

    Args:
        labels: Class name per item.
        groups: Patient id per item, or "" when unknown.
        fractions: (train, val, test), summing to 1.
        seed: Same seed, same inputs -> same split.

    Raises:
        UserError: Bad fractions, or a class with too few groups to be in every split.
    """
    _check_fractions(fractions)
    labels = np.asarray(labels)
    codes = _group_codes(groups)
    _check_enough_groups(labels, codes, fractions)
    _, val_fraction, test_fraction = fractions
    rest, test = _pick_fold(labels, codes, np.arange(len(labels)), 1 / test_fraction, seed)
    train, val = _pick_fold(labels, codes, rest, (1 - test_fraction) / val_fraction, seed)
    result = np.empty(len(labels), dtype=object)
    result[train], result[val], result[test] = "train", "val", "test"
    return result.tolist()


def fraction_check(splits: Sequence[str], fractions=(0.7, 0.15, 0.15), margin: float = FRACTION_MARGIN) -> dict:
    """The shares of the images each split came out with, against those asked for.

    Returns:
        ``asked`` and ``achieved`` (split -> share of the images), ``margin``, and ``warning``:
        one line when some split is more than ``margin`` off, else None.
    """
    splits = np.asarray(splits)
    total = max(1, len(splits))
    asked = dict(zip(SPLITS, (float(f) for f in fractions)))
    achieved = {name: float((splits == name).sum() / total) for name in SPLITS}
    warning = None
    if any(abs(achieved[name] - asked[name]) > margin for name in SPLITS):
        warning = (f"warning: the split came out {_shares(achieved)} (train / val / test) of {len(splits)} "
                   f"images, asked {_shares(asked)}: more than {margin * 100:g} percentage points off, because "
                   "large near-duplicate or patient groups each go whole into one split (the groups are in audit.csv)")
    return {"asked": asked, "achieved": achieved, "margin": margin, "warning": warning}


def _shares(values: dict) -> str:
    return " / ".join(f"{values[name]:.1%}" for name in SPLITS)


def save_split(path, examples, splits) -> None:
    """Write ``path,label,group,source,split`` rows, one per example."""
    files.write_csv(path, _COLUMNS, ([e.path, e.label, e.group, e.source, s] for e, s in zip(examples, splits)))


def load_split(path) -> tuple[list[Example], list[str]]:
    """Read a file written by `save_split`: (examples, split per example).

    Raises:
        UserError: The file is missing or not a split file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Split file {path} does not exist; run the search to create it.")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames not in (_COLUMNS, _OLD_COLUMNS):
            raise UserError(
                f"{path} has columns {reader.fieldnames}, not {','.join(_COLUMNS)}; delete it "
                "to split again."
            )
        rows = list(reader)
    bad = sorted({row["split"] for row in rows} - set(SPLITS))
    if bad:
        raise UserError(f"{path} has unknown split names {bad}; delete it to split again.")
    examples = [Example(row["path"], row["label"], row["group"], source=row.get("source", ""))
                for row in rows]
    return examples, [row["split"] for row in rows]


def _check_fractions(fractions) -> None:
    if len(fractions) != 3 or min(fractions) <= 0 or not math.isclose(sum(fractions), 1.0):
        raise UserError(
            f"Split fractions {tuple(fractions)} must be three positive numbers "
            "(train, val, test) summing to 1, e.g. (0.7, 0.15, 0.15)."
        )


def _group_codes(groups: Sequence[str]) -> np.ndarray:
    """Integer group ids; every empty group becomes its own singleton."""
    codes, known = [], {}
    for index, group in enumerate(groups):
        key = group if group else ("", index)
        codes.append(known.setdefault(key, len(known)))
    return np.asarray(codes)


def _check_enough_groups(labels: np.ndarray, codes: np.ndarray, fractions) -> None:
    # With fewer than 1/min_fraction groups, the smallest split's expected share of a
    # class is under one group, so the class would often be missing from it.
    needed = max(len(SPLITS), math.ceil(1 / min(fractions) - 1e-9))
    for label, found in _groups_per_class(labels, codes).items():
        if found < needed:
            images = int(np.sum(labels == label))
            raise UserError(
                f"Class {label} has {images} image(s) in {found} near-duplicate or patient group(s); each class "
                f"needs at least {needed} groups so that train, val and test all get some. "
                "Add images of that class or leave it out."
            )


def _groups_per_class(labels: np.ndarray, codes: np.ndarray) -> dict:
    """``{class: number of distinct groups}``, classes sorted."""
    groups = defaultdict(set)
    for label, code in zip(labels, codes):
        groups[label].add(code)
    return {label: len(groups[label]) for label in sorted(groups)}


def _pick_fold(labels, codes, items: np.ndarray, folds: float, seed: int):
    """(kept, held_out) item indices: the first fold whose both sides hold every class."""
    n_splits = max(2, min(round(folds), len(np.unique(codes[items]))))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    every_class = set(labels.tolist())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class" is expected
        for kept, held_out in splitter.split(items, labels[items], codes[items]):
            if set(labels[items[kept]]) == every_class == set(labels[items[held_out]]):
                return items[kept], items[held_out]
    raise UserError(
        "Could not split the data so that every class is in train, val and test: a few "
        "large near-duplicate or patient groups dominate a class. Add images or change the split fractions."
    )


def splits_of(examples, path) -> list[str]:
    """The split of each example according to the split file at ``path``.

    Returns:
        One split name per example; ``""`` for an example the file does not list
        (e.g. one that was skipped as unreadable).
    """
    listed, names = load_split(path)
    split_of = {e.path: s for e, s in zip(listed, names)}
    return [split_of.get(e.path, "") for e in examples]


def fold_split(labels: Sequence[str], groups: Sequence[str], folds: int, seed: int = 0) -> list[tuple]:
    """``folds`` (train, validation) index pairs over the items; no group is ever on both sides.

    scikit-learn's StratifiedGroupKFold, shuffled with ``seed``: each item is in exactly
    one validation fold, and each class is in every fold's validation (refused otherwise).

    Raises:
        UserError: A class has fewer groups than ``folds``, or a few large groups keep a
            class out of some fold's validation.
    """
    labels = np.asarray(labels)
    codes = _group_codes(groups)
    for label, found in _groups_per_class(labels, codes).items():
        if found < folds:
            raise UserError(
                f"--folds {folds} needs at least {folds} near-duplicate or patient groups of each class in "
                f"train+val, class {label} has {found} (of {int(np.sum(labels == label))} image(s)), so some fold "
                f"would validate without it; use --folds {max(2, found)} or fewer, or no --folds.")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class" is expected
        pairs = list(splitter.split(labels, labels, codes))
    every_class = set(labels.tolist())
    if any(set(labels[held_out].tolist()) != every_class for _, held_out in pairs):
        raise UserError(
            f"Could not make {folds} folds of train+val that each validate on every class: a few "
            f"large near-duplicate or patient groups dominate a class. Use a smaller --folds, or no --folds.")
    return pairs
