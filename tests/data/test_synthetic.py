import csv

import numpy as np
import pytest
from PIL import Image

from cxr_tuner.data.errors import UserError
from cxr_tuner.data.synthetic import CLASS_NAMES, phantom, write_demo_dataset


def _rows_with_mask(mask):
    return np.nonzero(mask)[0]


def test_phantom_is_deterministic_per_rng_state():
    first = phantom("COVID", np.random.default_rng(7), size=64)
    second = phantom("COVID", np.random.default_rng(7), size=64)
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])


def test_phantom_varies_between_images():
    first, _ = phantom("Normal", np.random.default_rng(1))
    second, _ = phantom("Normal", np.random.default_rng(2))
    assert np.abs(first.astype(int) - second.astype(int)).mean() > 2


@pytest.mark.parametrize("label", CLASS_NAMES)
def test_phantom_shape_and_types(label):
    image, mask = phantom(label, np.random.default_rng(0), size=96)
    assert image.shape == mask.shape == (96, 96)
    assert image.dtype == np.uint8 and mask.dtype == bool


def test_normal_has_no_lesion_mask():
    for seed in range(10):
        _, mask = phantom("Normal", np.random.default_rng(seed))
        assert not mask.any()


@pytest.mark.parametrize(
    ("label", "lower_half"), [("COVID", True), ("Viral_Pneumonia", False)]
)
def test_lesions_sit_where_promised(label, lower_half):
    for seed in range(20):
        _, mask = phantom(label, np.random.default_rng(seed), size=128)
        rows = _rows_with_mask(mask)
        assert rows.size > 20
        in_lower = (rows >= 64).mean()
        assert in_lower > 0.9 if lower_half else in_lower < 0.1
        # Both lungs carry opacities.
        cols = np.nonzero(mask)[1]
        assert (cols < 64).any() and (cols >= 64).any()


def test_covid_lesions_are_peripheral_and_viral_perihilar():
    def mean_distance_from_midline(label):
        distances = []
        for seed in range(20):
            _, mask = phantom(label, np.random.default_rng(seed), size=128)
            distances.append(np.abs(np.nonzero(mask)[1] - 63.5).mean())
        return np.mean(distances)

    assert mean_distance_from_midline("COVID") > mean_distance_from_midline("Viral_Pneumonia") + 8


def test_lesions_are_brighter_than_the_same_place_without_them():
    # The mask marks a visible opacity, not just a region: the pixels under it are
    # brighter in the disease phantom than in a Normal phantom drawn with the same rng.
    image, mask = phantom("COVID", np.random.default_rng(3))
    normal, _ = phantom("Normal", np.random.default_rng(3))
    assert image[mask].mean() > normal[mask].mean() + 20


def test_unknown_label_is_refused():
    with pytest.raises(ValueError, match="unknown class"):
        phantom("Pneumothorax", np.random.default_rng(0))


def test_demo_dataset_files_metadata_and_masks(tmp_path):
    root = write_demo_dataset(tmp_path / "demo", n_per_class=5, size=48, seed=3)
    with (root / "metadata.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["label"] for r in rows].count("COVID") == 5 and len(rows) == 15
    assert set(rows[0]) == {"path", "label", "patient_id"}
    for label in CLASS_NAMES:
        assert len(list((root / label).glob("*.png"))) == 5
    image = Image.open(root / rows[0]["path"])
    assert image.mode == "L" and image.size == (48, 48)
    # Patients hold two images each, within one class.
    patients = [r["patient_id"] for r in rows]
    assert len(set(patients)) == 9 and patients[0] == patients[1]
    masks = np.load(root / "lesion_masks.npz")
    assert set(masks.files) == {r["path"] for r in rows}
    for row in rows:
        assert masks[row["path"]].any() == (row["label"] != "Normal")


def test_demo_dataset_same_seed_same_bytes(tmp_path):
    first = write_demo_dataset(tmp_path / "a", n_per_class=3, size=32, seed=5)
    second = write_demo_dataset(tmp_path / "b", n_per_class=3, size=32, seed=5)
    other = write_demo_dataset(tmp_path / "c", n_per_class=3, size=32, seed=6)
    name = "Viral_Pneumonia/Viral_Pneumonia-2.png"
    assert (first / name).read_bytes() == (second / name).read_bytes()
    assert (first / "metadata.csv").read_bytes() == (second / "metadata.csv").read_bytes()
    assert (first / name).read_bytes() != (other / name).read_bytes()


def test_demo_dataset_is_reused_when_unchanged(tmp_path):
    root = write_demo_dataset(tmp_path / "demo", n_per_class=2, size=32)
    image = root / "COVID" / "COVID-1.png"
    image.write_bytes(b"marker")
    write_demo_dataset(root, n_per_class=2, size=32)
    assert image.read_bytes() == b"marker"


def test_demo_dataset_rewritten_without_stale_images(tmp_path):
    root = write_demo_dataset(tmp_path / "demo", n_per_class=4, size=32)
    write_demo_dataset(root, n_per_class=2, size=32)
    assert sorted(p.name for p in (root / "COVID").iterdir()) == ["COVID-1.png", "COVID-2.png"]


def test_demo_dataset_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        write_demo_dataset(tmp_path, n_per_class=1, size=32)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_severity_fades_the_opacities_where_the_mask_says():
    def image(severity):
        return phantom("COVID", np.random.default_rng(3), size=96, severity=severity)

    (faint, mask), (full, same_mask), (none, _) = image(0.3), image(1.0), image(0.0)
    assert np.array_equal(mask, same_mask) and mask.any()
    gain = lambda img: (img.astype(float) - none)[mask].mean()  # noqa: E731
    assert 0 < gain(faint) < 0.5 * gain(full)
    assert np.abs(full.astype(int) - none)[~mask].mean() < np.abs(full.astype(int) - none)[mask].mean() / 5


def test_demo_set_mixes_faint_and_clear_cases(tmp_path):
    """The demo's classes overlap: its diseased films range from faint to full opacities."""
    root = write_demo_dataset(tmp_path / "demo", n_per_class=12, size=64, seed=0)
    shares = []
    for i in range(1, 13):
        written = np.asarray(Image.open(root / "COVID" / f"COVID-{i}.png")).astype(float)
        full, mask = phantom("COVID", np.random.default_rng([0, 0, i]), 64, severity=1.0)
        none, _ = phantom("COVID", np.random.default_rng([0, 0, i]), 64, severity=0.0)
        shares.append((written - none)[mask].mean() / (full.astype(float) - none)[mask].mean())
    assert min(shares) < 0.5 and max(shares) > 0.8
