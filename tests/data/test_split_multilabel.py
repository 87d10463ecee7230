"""Multi-label split: grouped by patient, iteratively stratified, rare labels dropped with a line."""

from collections import defaultdict

import numpy as np
import pytest

from cxr_tuner.data.errors import UserError
from cxr_tuner.data.labels import MASKED
from cxr_tuner.data.split import (
    SPLITS, fold_split_multilabel, fraction_check, positive_groups_per_split, positives_per_split,
    split_multilabel,
)

NAMES = ["Cardiomegaly", "Edema", "Effusion", "Hernia"]


def _dataset(patients=120, seed=0):
    """Patients with 1-3 films; three common labels and Hernia in only 4 patients; some films without a patient."""
    rng = np.random.default_rng(seed)
    rows, groups = [], []
    for patient in range(patients):
        for _ in range(1 + patient % 3):
            rows.append([rng.random() < 0.3, rng.random() < 0.2, rng.random() < 0.4, patient in (3, 40, 77, 101)])
            groups.append(f"p{patient}")
    for _ in range(10):
        rows.append([rng.random() < 0.3, 0, 1, 0])
        groups.append("")
    targets = np.asarray(rows, dtype=np.float32)
    targets[5, 1] = MASKED  # a masked label is not positive
    return targets, groups


def test_no_group_in_two_splits_and_every_kept_label_has_positive_groups_in_each_split():
    targets, groups = _dataset()
    splits, kept, dropped = split_multilabel(targets, groups, NAMES, seed=3, min_groups=4)
    assert len(splits) == len(groups) and set(splits) == set(SPLITS)
    splits_of_group = defaultdict(set)
    for group, split in zip(groups, splits):
        if group:
            splits_of_group[group].add(split)
    assert all(len(s) == 1 for s in splits_of_group.values())
    assert kept == ["Cardiomegaly", "Edema", "Effusion"]
    counts = positive_groups_per_split(targets, groups, splits, NAMES)
    assert all(counts[name][split] >= 4 for name in kept for split in SPLITS)
    assert fraction_check(splits)["achieved"]["train"] > 0.5


def test_a_rare_label_is_dropped_with_one_line_giving_its_real_counts():
    targets, groups = _dataset()
    splits, kept, dropped = split_multilabel(targets, groups, NAMES, seed=3, min_groups=4)
    assert "Hernia" not in kept and len(dropped) == 1
    counts = positive_groups_per_split(targets, groups, splits, NAMES)["Hernia"]
    assert sum(counts.values()) == 4
    worst = min(SPLITS, key=lambda s: counts[s])
    assert dropped[0] == (
        f"label Hernia dropped: {counts[worst]} positive near-duplicate or patient groups in {worst} "
        f"(train {counts['train']}, val {counts['val']}, test {counts['test']}); each kept label needs at least 4 "
        "in every split")


def test_same_seed_same_split_other_seed_other_split():
    targets, groups = _dataset()
    first = split_multilabel(targets, groups, NAMES, seed=1, min_groups=2)
    assert first == split_multilabel(targets, groups, NAMES, seed=1, min_groups=2)
    assert first[0] != split_multilabel(targets, groups, NAMES, seed=2, min_groups=2)[0]


def test_no_label_left_is_a_user_error():
    targets, groups = _dataset(patients=30)
    with pytest.raises(UserError, match="No label has at least 50 positive"):
        split_multilabel(targets, groups, NAMES, min_groups=50)
    with pytest.raises(UserError, match="summing to 1"):
        split_multilabel(targets, groups, NAMES, fractions=(0.5, 0.3, 0.3))


def test_one_label_splits_too():
    targets, groups = _dataset()
    splits, kept, _ = split_multilabel(targets[:, :1], groups, NAMES[:1], min_groups=3)
    assert kept == NAMES[:1] and set(splits) == set(SPLITS)


def test_positives_are_counted_in_films_and_in_groups_and_masked_is_not_positive():
    targets = np.array([[1, MASKED], [1, 0], [1, 1], [0, 1]], dtype=np.float32)
    groups, splits = ["a", "a", "", ""], ["train", "train", "val", "test"]
    assert positives_per_split(targets, splits, ["A", "B"]) == {
        "A": {"train": 2, "val": 1, "test": 0}, "B": {"train": 0, "val": 1, "test": 1}}
    assert positive_groups_per_split(targets, groups, splits, ["A", "B"]) == {
        "A": {"train": 1, "val": 1, "test": 0}, "B": {"train": 0, "val": 1, "test": 1}}


def test_folds_are_grouped_cover_every_film_once_and_validate_on_every_label():
    targets, groups = _dataset()
    targets = targets[:, :3]
    pairs = fold_split_multilabel(targets, groups, folds=3, seed=0)
    assert len(pairs) == 3
    validated = np.concatenate([val for _, val in pairs])
    assert sorted(validated.tolist()) == list(range(len(groups)))
    for train, val in pairs:
        assert not {groups[i] for i in train if groups[i]} & {groups[i] for i in val if groups[i]}
        assert (targets[val] == 1).any(axis=0).all()
    assert [v.tolist() for _, v in pairs] == [v.tolist() for _, v in fold_split_multilabel(targets, groups, 3, seed=0)]


def test_a_label_with_fewer_positive_groups_than_folds_is_named():
    targets, groups = _dataset()
    with pytest.raises(UserError, match=r"--folds 5 .*label Hernia has 4 .*use --folds 4 or fewer"):
        fold_split_multilabel(targets, groups, folds=5, names=NAMES)
