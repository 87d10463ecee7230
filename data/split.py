"""Train/val/test split, stratified by class and grouped by patient; saved as split.csv.

The groups a run splits by are patients merged with their near-duplicate images
(data.audit.leak_groups), so the messages here say "near-duplicate or patient groups".
"""

import csv
import math
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from cxr_tuner.data import files
from cxr_tuner.data.errors import UserError
from cxr_tuner.data.manifest import Example

SPLITS = ("train", "val", "test")
# A split share further than this from the one asked for (absolute, 0.05 = 5 points) is warned about:
# groups go whole into one split, so a few large ones can move the shares far.
FRACTION_MARGIN = 0.05
_COLUMNS = ["path", "label", "group", "source", "split"]
_OLD_COLUMNS = ["path", "label", "group", "split"]  # before sources were kept: read, source ""


def split_by_group(
    labels: Sequence[str], groups: Sequence[str], fractions=(0.7, 0.15, 0.15), seed: int = 0,
    sources: Sequence[str] | None = None,
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
        sources: The source of each item, to keep sources apart between train and
            validation: in a class with films from two or more sources, validation takes
            whole sources of it, so its loss measures transfer to a source training never
            saw. Classes of one source split by group as before; test is split as always.

    Raises:
        UserError: Bad fractions, or a class with too few groups to be in every split.
    """
    _check_fractions(fractions)
    labels = np.asarray(labels)
    codes = _group_codes(groups)
    _check_enough_groups(labels, codes, fractions)
    _, val_fraction, test_fraction = fractions
    rest, test = _pick_fold(labels, codes, np.arange(len(labels)), 1 / test_fraction, seed)
    if sources is None:
        train, val = _pick_fold(labels, codes, rest, (1 - test_fraction) / val_fraction, seed)
    else:
        train, val = _sources_apart(labels, codes, sources, rest, val_fraction / (1 - test_fraction), seed)
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


def _sources_apart(labels: np.ndarray, codes: np.ndarray, sources, items: np.ndarray, share: float, seed: int):
    """(train, val) of ``items``: whole sources of each class with 2+ sources in val, the rest by group.

    A multi-source class sends sources, in a seeded order, to validation until it holds about
    ``share`` of the class (at least one source, never all); classes of one source split by group.
    """
    sources = np.asarray([s or "" for s in sources], dtype=object)
    rng = np.random.default_rng(seed)
    val_parts, train_parts, single = [], [], []
    for label in np.unique(labels[items]):
        mine = items[labels[items] == label]
        known = sorted(set(sources[mine]) - {""})
        if len(known) < 2:
            single.append(mine)
            continue
        chosen, held = [], 0
        for source in rng.permutation(known)[:-1]:
            if chosen and held >= share * len(mine):
                break
            chosen.append(source)
            held += int((sources[mine] == source).sum())
        in_val = np.isin(sources[mine], chosen)
        val_parts.append(mine[in_val])
        train_parts.append(mine[~in_val])
    if single:
        kept, held_out = _pick_fold(labels, codes, np.sort(np.concatenate(single)), 1 / share, seed)
        train_parts.append(kept)
        val_parts.append(held_out)
    return np.sort(np.concatenate(train_parts)), np.sort(np.concatenate(val_parts))


def source_apart_classes(labels: Sequence[str], sources: Sequence[str]) -> list[str]:
    """The classes with films from two or more known sources (what ``sources=`` keeps apart)."""
    found = defaultdict(set)
    for label, source in zip(labels, sources):
        if source:
            found[label].add(source)
    return sorted(label for label, names in found.items() if len(names) >= 2)


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
    every_class = set(labels[items].tolist())
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


# A kept label needs at least this many positive groups in each of train, val and test.
MIN_POSITIVE_GROUPS = 5


def split_multilabel(
    targets: np.ndarray, groups: Sequence[str], names: Sequence[str], fractions=(0.7, 0.15, 0.15),
    seed: int = 0, min_groups: int = MIN_POSITIVE_GROUPS,
) -> tuple[list[str], list[str], list[str]]:
    """Split multi-label films by group, stratified over the labels; drop labels too rare to evaluate.

    Each group's label vector is the OR of its films' (masked counts as not positive);
    iterstrat's MultilabelStratifiedKFold over the groups then picks test as one fold
    of round(1/test_fraction) folds, and val as one fold of the rest. An empty group
    is a group of its own.

    Args:
        targets: (films, labels) with 1, 0 or labels.MASKED.
        groups: Patient id per film, or "" when unknown.
        names: The label name of each column.
        fractions: (train, val, test), summing to 1.
        seed: Same seed, same inputs -> same split.
        min_groups: A label with fewer positive groups than this in some split is dropped.

    Returns:
        (split per film, the kept label names, one line per dropped label).

    Raises:
        UserError: Bad fractions, or no label left.
    """
    _check_fractions(fractions)
    targets = _check_targets(targets, groups, names)
    codes = _group_codes(groups)
    positive = _group_positives(targets, codes)
    if len(positive) < len(SPLITS):
        raise UserError(
            f"{len(positive)} near-duplicate or patient group(s) cannot fill train, val and test; add films.")
    _, val_fraction, test_fraction = fractions
    every = np.arange(len(positive))
    rest, test = _pick_multilabel_fold(positive, every, 1 / test_fraction, seed)
    train, val = _pick_multilabel_fold(positive, rest, (1 - test_fraction) / val_fraction, seed)
    split_of_group = np.empty(len(positive), dtype=object)
    split_of_group[train], split_of_group[val], split_of_group[test] = "train", "val", "test"
    splits = split_of_group[codes].tolist()
    counts = positive_groups_per_split(targets, groups, splits, names)
    kept, dropped = [], []
    for name in names:
        per_split = counts[name]
        worst = min(SPLITS, key=lambda split: per_split[split])
        if per_split[worst] >= min_groups:
            kept.append(name)
            continue
        dropped.append(
            f"label {name} dropped: {per_split[worst]} positive near-duplicate or patient groups in {worst} "
            f"({', '.join(f'{s} {per_split[s]}' for s in SPLITS)}); each kept label needs at least {min_groups} "
            "in every split")
    if not kept:
        raise UserError(
            f"No label has at least {min_groups} positive near-duplicate or patient groups in each of train, val "
            f"and test ({len(names)} label(s), the most in a split's worst case: "
            f"{max(min(counts[n].values()) for n in names)}): add films of patients with those findings, or "
            "ask for fewer positive groups per split.")
    return splits, kept, dropped


def positives_per_split(targets: np.ndarray, splits: Sequence[str], names: Sequence[str]) -> dict:
    """``{label: {split: positive films}}`` (masked films are not positive)."""
    targets = np.asarray(targets)
    splits = np.asarray(splits)
    return {name: {split: int(np.sum(targets[splits == split, column] == 1)) for split in SPLITS}
            for column, name in enumerate(names)}


def positive_groups_per_split(
    targets: np.ndarray, groups: Sequence[str], splits: Sequence[str], names: Sequence[str]
) -> dict:
    """``{label: {split: groups with a positive film}}``; an empty group counts once per film."""
    targets = np.asarray(targets)
    codes = _group_codes(groups)
    splits = np.asarray(splits)
    result = {}
    for column, name in enumerate(names):
        positive = targets[:, column] == 1
        result[name] = {split: len(np.unique(codes[positive & (splits == split)])) for split in SPLITS}
    return result


def fold_split_multilabel(
    targets: np.ndarray, groups: Sequence[str], folds: int, seed: int = 0, names: Sequence[str] | None = None
) -> list[tuple]:
    """``folds`` (train, validation) film-index pairs; no group on both sides, stratified over the labels.

    Grouped and iteratively stratified as `split_multilabel`: each film is in exactly one
    validation fold, and each label has a positive film in every fold's validation
    (refused otherwise).

    Raises:
        UserError: A label has fewer positive groups than ``folds``, or a few large groups
            keep a label out of some fold's validation.
    """
    names = list(names) if names is not None else [f"column {i}" for i in range(np.shape(targets)[1])]
    targets = _check_targets(targets, groups, names)
    codes = _group_codes(groups)
    positive = _group_positives(targets, codes)
    for column, name in enumerate(names):
        found = int(positive[:, column].sum())
        if found < folds:
            raise UserError(
                f"--folds {folds} needs at least {folds} near-duplicate or patient groups with each label in "
                f"train+val, label {name} has {found} (of {int(np.sum(targets[:, column] == 1))} positive film(s)), "
                f"so some fold would validate without it; use --folds {max(2, found)} or fewer, or no --folds.")
    pairs = []
    for _, held_out in _multilabel_folds(positive, folds, seed):
        validate = np.isin(codes, held_out)
        pairs.append((np.flatnonzero(~validate), np.flatnonzero(validate)))
    if any(not np.all(targets[held_out].max(axis=0) == 1) for _, held_out in pairs):
        raise UserError(
            f"Could not make {folds} folds of train+val that each validate on every label: a few large "
            "near-duplicate or patient groups hold a label's positives. Use a smaller --folds, or no --folds.")
    return pairs


def _check_targets(targets, groups, names) -> np.ndarray:
    targets = np.asarray(targets, dtype=np.float32)
    if targets.ndim != 2 or targets.shape != (len(groups), len(names)):
        raise ValueError(f"targets of shape {targets.shape}, expected ({len(groups)}, {len(names)})")
    return targets


def _group_positives(targets: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """(groups, labels) bool: a group is positive for a label when any of its films is."""
    positive = np.zeros((codes.max() + 1 if len(codes) else 0, targets.shape[1]), dtype=bool)
    np.logical_or.at(positive, codes, targets == 1)
    return positive


def _multilabel_folds(positive: np.ndarray, folds: int, seed: int):
    """MultilabelStratifiedKFold's (kept, held-out) group-index pairs over the rows of ``positive``."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold  # lazy: only multi-label runs need it

    if positive.shape[1] == 1:  # one label is not "multilabel-indicator" to it: add its complement
        positive = np.hstack([positive, ~positive])
    splitter = MultilabelStratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return list(splitter.split(np.zeros(len(positive)), positive.astype(int)))


def _pick_multilabel_fold(positive: np.ndarray, items: np.ndarray, folds: float, seed: int):
    """(kept, held_out) group indices: the first of round(folds) stratified folds of ``items``."""
    n_splits = max(2, min(round(folds), len(items)))
    kept, held_out = _multilabel_folds(positive[items], n_splits, seed)[0]
    return items[kept], items[held_out]
