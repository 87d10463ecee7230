"""Sources kept apart between train and validation, where a class has two or more."""

from cxr_tuner.data import split


def _collection():
    labels, groups, sources = [], [], []
    for i in range(60):  # class A from two hospitals, B and C from one each
        labels.append("A"), groups.append(f"a{i}"), sources.append("north" if i < 36 else "south")
    for i in range(40):
        labels.append("B"), groups.append(f"b{i}"), sources.append("north")
    for i in range(40):
        labels.append("C"), groups.append(f"c{i // 2}"), sources.append("")
    return labels, groups, sources


def _sources_in(splits, labels, sources, name, label="A"):
    return {s for s, l, where in zip(sources, labels, splits) if where == name and l == label}


def test_validation_takes_whole_sources_of_a_class_with_two():
    labels, groups, sources = _collection()
    splits = split.split_by_group(labels, groups, (0.7, 0.15, 0.15), seed=1, sources=sources)
    train, val = (_sources_in(splits, labels, sources, name) for name in ("train", "val"))
    assert train and val and not train & val
    assert {split_name for split_name in splits} == {"train", "val", "test"}
    for label in "ABC":  # every class in every split
        assert all(any(l == label and s == name for l, s in zip(labels, splits)) for name in split.SPLITS)
    # Patients still never span two splits.
    by_group = {}
    for group, where in zip(groups, splits):
        assert by_group.setdefault(group, where) == where
    assert split.source_apart_classes(labels, sources) == ["A"]


def test_without_the_option_a_source_feeds_both_and_the_test_split_is_the_same():
    labels, groups, sources = _collection()
    mixed = split.split_by_group(labels, groups, (0.7, 0.15, 0.15), seed=1)
    apart = split.split_by_group(labels, groups, (0.7, 0.15, 0.15), seed=1, sources=sources)
    assert _sources_in(mixed, labels, sources, "train") & _sources_in(mixed, labels, sources, "val")
    assert [s == "test" for s in mixed] == [s == "test" for s in apart]


def test_several_classes_of_several_sources_each_keep_them_apart():
    labels, groups, sources = _collection()
    sources = [("east" if i % 3 else "west") if l == "B" else s for i, (l, s) in enumerate(zip(labels, sources))]
    for seed in range(3):
        splits = split.split_by_group(labels, groups, (0.7, 0.15, 0.15), seed=seed, sources=sources)
        for label in "AB":
            train, val = (_sources_in(splits, labels, sources, name, label) for name in ("train", "val"))
            assert train and val and not train & val
