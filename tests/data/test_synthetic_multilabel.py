import csv

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_tuner.data.errors import UserError
from cxr_tuner.data.synthetic import write_demo_dataset
from cxr_tuner.data.synthetic_findings import (MULTILABEL_FINDINGS, MULTILABEL_PREVALENCES, multilabel_findings,
                                              multilabel_phantom, write_multilabel_demo)


def _rows(root):
    with (root / "labels.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_findings_shares_follow_the_prevalences():
    labels, _ = multilabel_findings(40_000, seed=1)
    for name, share in zip(MULTILABEL_FINDINGS, labels.mean(0)):
        expected = MULTILABEL_PREVALENCES[name]
        assert abs(share - expected) < max(0.2 * expected, 0.004), name


def test_prevalences_can_be_given():
    labels, _ = multilabel_findings(20_000, seed=2, prevalences={"Pneumothorax": 0.2})
    assert abs(labels[:, MULTILABEL_FINDINGS.index("Pneumothorax")].mean() - 0.2) < 0.02
    with pytest.raises(ValueError, match="unknown findings"):
        multilabel_findings(10, prevalences={"Hernia": 0.1})


def test_effusion_goes_with_cardiomegaly():
    labels, _ = multilabel_findings(40_000, seed=3)
    effusion, cardiomegaly = labels[:, 0] == 1, labels[:, 1] == 1
    assert effusion[cardiomegaly].mean() > effusion[~cardiomegaly].mean() + 0.15
    # The other findings are drawn independently of each other.
    nodule, consolidation = labels[:, 3] == 1, labels[:, 2] == 1
    assert abs(nodule[consolidation].mean() - nodule[~consolidation].mean()) < 0.02


def test_patients_hold_one_to_four_films_that_share_findings():
    labels, patients = multilabel_findings(20_000, seed=4)
    counts = np.bincount(patients)
    assert counts.min() >= 1 and counts.max() == 4 and (counts >= 2).mean() > 0.6
    assert np.all(np.diff(patients) >= 0)
    same = patients[1:] == patients[:-1]
    for column, name in enumerate(MULTILABEL_FINDINGS):
        before, after = labels[:-1][same, column], labels[1:][same, column]
        # A film after a positive film of the same patient is far likelier positive than the prevalence.
        assert after[before == 1].mean() > MULTILABEL_PREVALENCES[name] + 0.3, name


def test_floor_of_positive_patients():
    labels, patients = multilabel_findings(300, seed=5, min_positive_patients=30)
    for column in range(len(MULTILABEL_FINDINGS)):
        assert np.unique(patients[labels[:, column] == 1]).size >= 30
    plain, _ = multilabel_findings(300, seed=5)
    assert np.unique(patients[plain[:, -1] == 1]).size < 30


def test_phantom_findings_change_the_film_where_their_masks_are():
    def film(findings):
        return multilabel_phantom(findings, np.random.default_rng([7, 1]), np.random.default_rng([7, 2]), size=64)

    clear, no_masks = film([])
    assert no_masks == {}
    for name in MULTILABEL_FINDINGS:
        image, masks = film([name])
        assert set(masks) == {name} and masks[name].any(), name
        change = np.abs(image.astype(int) - clear)
        assert change[masks[name]].mean() > 3 * change[~masks[name]].mean() + 1, name


def test_films_of_a_patient_look_alike():
    def film(patient, i):
        return multilabel_phantom([], np.random.default_rng([patient]), np.random.default_rng([patient, i]), 64)[0]

    # Exposure differs between films; the anatomy (correlation) stays the patient's.
    def likeness(a, b):
        return np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1]

    same = [likeness(film(p, 1), film(p, 2)) for p in range(8)]
    other = [likeness(film(p, 1), film(p + 1, 1)) for p in range(8)]
    assert np.mean(same) > np.mean(other) + 0.1


def test_demo_csv_header_values_and_patients(tmp_path):
    root = write_multilabel_demo(tmp_path / "demo", n_films=40, size=32, seed=1, min_positive_patients=3)
    rows = _rows(root)
    with (root / "labels.csv").open() as handle:
        assert handle.readline().strip() == ",".join(("path", *MULTILABEL_FINDINGS, "patient_id"))
    assert len(rows) == 40
    assert {row[name] for row in rows for name in MULTILABEL_FINDINGS} == {"0", "1"}
    image = Image.open(root / rows[0]["path"])
    assert image.mode == "L" and image.size == (32, 32)
    films = np.unique([row["patient_id"] for row in rows], return_counts=True)[1]
    assert films.max() > 1 and films.max() <= 4 and films.size < 30
    for name in MULTILABEL_FINDINGS:
        assert len({row["patient_id"] for row in rows if row[name] == "1"}) >= 3


def test_demo_same_seed_same_bytes(tmp_path):
    first = write_multilabel_demo(tmp_path / "a", n_films=12, size=32, seed=5)
    second = write_multilabel_demo(tmp_path / "b", n_films=12, size=32, seed=5)
    other = write_multilabel_demo(tmp_path / "c", n_films=12, size=32, seed=6)
    for name in ("labels.csv", "images/film-0007.png"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    assert (first / "images/film-0007.png").read_bytes() != (other / "images/film-0007.png").read_bytes()


def test_demo_is_reused_and_rewritten_like_the_single_label_demo(tmp_path):
    root = write_multilabel_demo(tmp_path / "demo", n_films=6, size=32)
    film = root / "images" / "film-0001.png"
    film.write_bytes(b"marker")
    write_multilabel_demo(root, n_films=6, size=32)
    assert film.read_bytes() == b"marker"
    write_multilabel_demo(root, n_films=3, size=32)
    assert sorted(p.name for p in (root / "images").iterdir()) == [f"film-000{i}.png" for i in (1, 2, 3)]
    assert len(_rows(root)) == 3
    # A single-label demo folder may be replaced by a multi-label one, without stale files.
    single = write_demo_dataset(tmp_path / "single", n_per_class=1, size=32)
    write_multilabel_demo(single, n_films=3, size=32)
    assert sorted(p.name for p in single.iterdir()) == ["images", "labels.csv", "synthetic.json"]


def test_demo_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        write_multilabel_demo(tmp_path, n_films=3, size=32)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_a_split_by_image_leaks_patients_and_the_leak_is_counted(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "bench"))  # as `python bench/...` runs
    from multilabel_reference import leaked_patients, split_by_image

    _, patients = multilabel_findings(600, seed=0)
    leak = leaked_patients(patients, split_by_image(len(patients), seed=0))
    assert leak["patients"] == patients.max() + 1 and leak["leaked_patients"] > 0.3 * leak["patients"]
    assert 0 < leak["test_films_with_patient_in_train"] <= leak["test_films"]
    by_patient = np.where(patients % 7 == 0, "test", np.where(patients % 7 == 1, "val", "train"))
    assert leaked_patients(patients, by_patient)["leaked_patients"] == 0
    assert leaked_patients(["a", "a", "b"], ["train", "test", "test"]) == {
        "patients": 2, "leaked_patients": 1, "leaked_share": 0.5, "test_films": 2,
        "test_films_with_patient_in_train": 1}
