import csv

import numpy as np
import pytest
from PIL import Image

from cxr_tuner.data.audit import audit, duplicate_groups, merge_groups, summary_lines, write_audit_csv
from cxr_tuner.data.manifest import Example
from cxr_tuner.data.synthetic import phantom


def _phantom(seed, label="COVID"):
    return phantom(label, np.random.default_rng(seed), size=128)[0]


def _near_copy(image):
    """Brightened, noised and resized: what re-exporting the same film does."""
    rng = np.random.default_rng(99)
    brighter = np.clip(image * 1.1 + 8 + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(brighter).resize((96, 96), Image.BILINEAR))


@pytest.fixture
def files(tmp_path):
    """original, its byte copy, a near copy, two different images; all PNG."""
    original = _phantom(1)
    images = {
        "original": original,
        "near": _near_copy(original),
        "other": _phantom(2),
        "other_normal": _phantom(3, "Normal"),
    }
    paths = {}
    for name, image in images.items():
        paths[name] = tmp_path / f"{name}.png"
        Image.fromarray(image).save(paths[name])
    paths["copy"] = tmp_path / "copy.png"
    paths["copy"].write_bytes(paths["original"].read_bytes())
    return {name: str(path) for name, path in paths.items()}


def test_exact_and_near_copies_share_a_group_others_do_not(files):
    names = ["original", "copy", "near", "other", "other_normal"]
    groups = dict(zip(names, duplicate_groups([files[n] for n in names])))
    assert groups["original"] == groups["copy"] == groups["near"]
    assert len({groups["original"], groups["other"], groups["other_normal"]}) == 3


def test_decoded_images_are_used_instead_of_the_files(files):
    # Different files on disk; the groups follow the pixels the caller passes.
    paths = [files["original"], files["other"]]
    decoded = np.stack([_phantom(5), _phantom(5)])[..., None]  # (N, s, s, 1) like the cache
    groups = duplicate_groups(paths, images=decoded)
    assert groups[0] == groups[1]
    groups = duplicate_groups(paths, images=[_phantom(5), _phantom(6)])
    assert groups[0] != groups[1]


def test_different_demo_phantoms_are_not_near_duplicates():
    images = [_phantom(seed, label) for seed in range(20) for label in ("COVID", "Normal")]
    groups = duplicate_groups([f"/missing/{i}.png" for i in range(len(images))], images=images)
    assert len(set(groups)) == len(images)


def test_audit_counts_and_rows(files):
    examples = [
        Example(files["original"], "COVID", "P1"),
        Example(files["copy"], "COVID", "P2"),
        Example(files["near"], "Normal", "P3"),  # the same film under another label
        Example(files["other"], "COVID", "P1"),
        Example(files["other_normal"], "Normal", "P4"),
    ]
    splits = ["train", "train", "test", "val", "val"]
    report = audit(examples, splits=splits)
    assert report.counts() == {
        "exact_duplicate_groups": 1,
        "near_duplicate_groups": 1,
        "cross_label_groups": 1,
        "cross_split_groups": 1,
        "cross_split_patients": 1,  # P1 is in train and val
    }
    kinds = {(row["path"], row["kind"]) for row in report.rows}
    assert (files["near"], "near_duplicate;cross_label;cross_split") in kinds
    assert (files["other"], "patient_cross_split") in kinds
    assert not any(row["path"] == files["other_normal"] for row in report.rows)


def test_audit_without_split_reports_no_split_problems(files):
    examples = [Example(files["original"], "COVID", "P1"), Example(files["copy"], "COVID", "P1")]
    report = audit(examples)
    assert report.exact_duplicate_groups == 1 and report.near_duplicate_groups == 0
    assert report.cross_split_groups == report.cross_split_patients == 0
    assert any("no split given" in line for line in summary_lines(report))


def test_undecodable_file_is_still_checked_for_exact_copies(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    copy = tmp_path / "copy.png"
    copy.write_bytes(broken.read_bytes())
    report = audit([Example(str(broken), "COVID"), Example(str(copy), "Normal")])
    assert report.n_unhashed == 2
    assert report.exact_duplicate_groups == 1 and report.cross_label_groups == 1


def test_audit_csv_has_the_group_rows(files, tmp_path):
    examples = [Example(files["original"], "COVID"), Example(files["copy"], "COVID")]
    report = audit(examples)
    write_audit_csv(tmp_path / "audit.csv", report)
    with open(tmp_path / "audit.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["group", "path", "label", "split", "kind"]
    assert len(rows) == 2 and rows[0]["group"] == rows[1]["group"]
    assert rows[0]["kind"] == "exact_duplicate"


def test_merge_groups_is_transitive():
    patients = ["P1", "P1", "P2", "", "P3", ""]
    duplicates = ["d0", "d1", "d1", "d3", "d3", "d5"]
    merged = merge_groups(patients, duplicates)
    # 0~1 by patient, 1~2 by duplicate: 0, 1, 2 together; 3~4 by duplicate.
    assert merged[0] == merged[1] == merged[2] == "P1"
    assert merged[3] == merged[4] == "P3"
    assert merged[5] == "d5"
    assert len({merged[0], merged[3], merged[5]}) == 3


def test_merge_groups_keeps_unrelated_ids_apart_and_empty_stays_empty():
    # "A" means different things in the two groupings: the sets must not merge.
    merged = merge_groups(["A", "", ""], ["", "A", ""])
    assert merged[0] != merged[1] and merged[2] == ""


def test_merge_groups_rejects_unequal_lengths():
    with pytest.raises(ValueError, match="differ in length"):
        merge_groups(["a"], ["a", "b"])


def test_an_image_in_no_split_is_not_counted_as_leaking(files):
    # E.g. `data audit PATH --split`: a file the search skipped is in the folder, not the split.
    examples = [Example(files["original"], "COVID", "P1"), Example(files["copy"], "COVID", "P1")]
    report = audit(examples, splits=["train", ""])
    assert report.exact_duplicate_groups == 1
    assert report.cross_split_groups == report.cross_split_patients == 0
    assert audit(examples, splits=["train", "test"]).cross_split_patients == 1


def test_unwritable_audit_csv_is_a_user_error(files, tmp_path):
    from cxr_tuner.data.errors import UserError

    report = audit([Example(files["original"], "COVID")])
    with pytest.raises(UserError, match="Cannot write the audit CSV"):
        write_audit_csv(tmp_path / "missing-folder" / "audit.csv", report)
