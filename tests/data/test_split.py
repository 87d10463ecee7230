"""Grouped, stratified train/val/test split and its split.csv."""

from collections import defaultdict

import pytest

from cxr_tuner.data.errors import UserError
from cxr_tuner.data.manifest import Example
from cxr_tuner.data.split import FRACTION_MARGIN, fraction_check, load_split, save_split, split_by_group


def _dataset():
    """3 classes of unequal size; patients with 1-3 images; some images without a patient id."""
    labels, groups = [], []
    for label, patients in (("COVID", 12), ("Normal", 30), ("Viral_Pneumonia", 20)):
        for patient in range(patients):
            for _ in range(1 + patient % 3):
                labels.append(label)
                groups.append(f"{label}-{patient}")
        for _ in range(4):
            labels.append(label)
            groups.append("")
    return labels, groups


def test_no_group_in_two_splits_and_every_class_in_every_split():
    labels, groups = _dataset()
    splits = split_by_group(labels, groups, seed=3)
    assert len(splits) == len(labels) and set(splits) == {"train", "val", "test"}
    splits_of_group = defaultdict(set)
    for group, split in zip(groups, splits):
        if group:
            splits_of_group[group].add(split)
    assert all(len(s) == 1 for s in splits_of_group.values())
    for split in ("train", "val", "test"):
        present = {label for label, s in zip(labels, splits) if s == split}
        assert present == {"COVID", "Normal", "Viral_Pneumonia"}
    counts = {s: splits.count(s) for s in ("train", "val", "test")}
    assert counts["train"] > counts["val"] + counts["test"]


def test_same_seed_same_split_other_seed_other_split():
    labels, groups = _dataset()
    assert split_by_group(labels, groups, seed=1) == split_by_group(labels, groups, seed=1)
    assert split_by_group(labels, groups, seed=1) != split_by_group(labels, groups, seed=2)


def test_class_with_too_few_groups_is_named():
    labels = ["COVID"] * 4 + ["Normal"] * 20
    groups = ["p1", "p1", "p2", "p3"] + [""] * 20
    message = r"Class COVID has 4 image\(s\) in 3 near-duplicate or patient group\(s\).*at least 7"
    with pytest.raises(UserError, match=message):
        split_by_group(labels, groups)


def test_bad_fractions_are_user_errors():
    with pytest.raises(UserError, match="summing to 1"):
        split_by_group(["a"] * 10 + ["b"] * 10, [""] * 20, fractions=(0.5, 0.3, 0.3))


def test_save_and_load_round_trip(tmp_path):
    examples = [Example("/d/a.png", "COVID", "p1"), Example("/d/b,c.png", "Normal", "")]
    save_split(tmp_path / "split.csv", examples, ["train", "test"])
    assert load_split(tmp_path / "split.csv") == (examples, ["train", "test"])
    with pytest.raises(UserError, match="does not exist"):
        load_split(tmp_path / "missing.csv")
    (tmp_path / "bad.csv").write_text("path,label\n/d/a.png,COVID\n")
    with pytest.raises(UserError, match="delete it"):
        load_split(tmp_path / "bad.csv")


def test_split_csv_keeps_the_source_and_reads_files_written_before_it(tmp_path):
    examples = [Example("/d/a.png", "COVID", "p1", source="H1"), Example("/d/b.png", "Normal", "", source="")]
    save_split(tmp_path / "split.csv", examples, ["train", "test"])
    loaded, _ = load_split(tmp_path / "split.csv")
    assert [e.source for e in loaded] == ["H1", ""]
    (tmp_path / "old.csv").write_text("path,label,group,split\n/d/a.png,COVID,p1,train\n")
    assert load_split(tmp_path / "old.csv")[0][0].source == ""


def _large_groups():
    """Per class one group of 8 images and six single images: a group goes whole into one split."""
    labels, groups = [], []
    for label in ("COVID", "Normal", "Viral_Pneumonia"):
        for group, size in enumerate((8, 1, 1, 1, 1, 1, 1)):
            labels += [label] * size
            groups += [f"{label}-{group}"] * size
    return labels, groups


def test_split_far_from_the_asked_fractions_is_warned_about_with_both_figures():
    labels, groups = _large_groups()
    check = fraction_check(split_by_group(labels, groups, seed=0))
    assert max(abs(check["achieved"][s] - check["asked"][s]) for s in check["asked"]) > FRACTION_MARGIN
    assert check["warning"].startswith("warning: the split came out ")
    assert "asked 70.0% / 15.0% / 15.0%" in check["warning"] and "near-duplicate or patient groups" in check["warning"]
    assert f"{check['achieved']['train']:.1%}" in check["warning"]


def test_split_near_the_asked_fractions_has_no_warning():
    labels, groups = _dataset()
    check = fraction_check(split_by_group(labels, groups, seed=3))
    assert check["warning"] is None and abs(check["achieved"]["train"] - 0.7) <= FRACTION_MARGIN
