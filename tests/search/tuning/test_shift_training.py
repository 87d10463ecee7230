"""Training that does not lean on how a film was made: stored copies through the activation cache,
every epoch a film or one of its copies, the mixed objective, and intensity standardised in the model."""

import keras_tuner
import numpy as np
import pytest

from cxr_tuner.data import pipeline, shift
from cxr_tuner.data.errors import UserError
from cxr_tuner.hypermodels.classifier import XrayClassifier
from cxr_tuner.search.engine import dataset
from cxr_tuner.search.engine.config import new_config
from cxr_tuner.search.tuning.activations import ActivationCache, trial_hypermodel
from tests.conftest import plain_keras_outputs

SIZE = 32


@pytest.fixture(scope="module")
def copied(tmp_path_factory, demo_data):
    """A run with two copies per train+val film, its trial data and its warmed cache."""
    config = new_config(str(tmp_path_factory.mktemp("run") / "r"), str(demo_data), backbones=("mobilenet_025",),
                        image_size=SIZE, weights="imagenet", batch_size=8, seed=3, shift_copies=2,
                        shift_objective="mixed")
    data = dataset.prepare(config, progress=False)
    hypermodel, cache = trial_hypermodel(data, progress=False)
    cache.warm(data.config.backbones)
    return data, hypermodel, cache


def _entries(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_copies_are_rendered_and_extracted_once(copied):
    data, hypermodel, cache = copied
    copies = hypermodel.datasets.copies
    fit = data.indices(dataset.FIT)
    assert copies.images.shape == (2 * len(fit), SIZE, SIZE, 1)
    np.testing.assert_array_equal(copies.sources, np.tile(fit, 2))
    # The copies are the renderer's chains of the run's films (seeded by the run), not the films.
    expected, _ = shift.training_copies(data.images, 2, seed=3, rows=fit[:5])
    np.testing.assert_array_equal(copies.images[:5], expected[:5])
    # Their activations have their own cache entry, beside the films'.
    assert cache.copies.entry("mobilenet_025") != cache.entry("mobilenet_025")
    activations = cache.copies.activations("mobilenet_025", 0)
    assert len(activations) == len(copies.images)
    before = _entries(data.config.layout.cache)
    again, cache_again = trial_hypermodel(data, progress=False)
    cache_again.warm(data.config.backbones)
    assert _entries(data.config.layout.cache) == before, "a second process reads the copies and their activations"


def test_an_epoch_shows_each_film_once_as_itself_or_a_copy(copied):
    data, hypermodel, cache = copied
    train_rows = data.indices("train")
    train, _ = hypermodel.datasets("mobilenet_025", 0, 0)
    films = np.asarray(cache.activations("mobilenet_025", 0))
    copies = np.asarray(cache.copies.activations("mobilenet_025", 0))
    seen_copies = 0
    for epoch in range(2):
        rows = []
        for batch, _, _ in train:
            for row in np.asarray(batch).reshape(len(batch), -1):
                film = np.flatnonzero((films.reshape(len(films), -1) == row).all(1))
                copy = np.flatnonzero((copies.reshape(len(copies), -1) == row).all(1))
                source = film[0] if len(film) else hypermodel.datasets.copies.sources[copy[0]]
                seen_copies += not len(film)
                rows.append(source)
        assert sorted(rows) == sorted(train_rows.tolist()), "every training film once per epoch"
    assert seen_copies > len(train_rows) // 2, "copies are shown about two times in three"


def test_the_mixed_objective_validates_on_the_films_and_their_copies(copied):
    data, hypermodel, _ = copied
    val = data.indices("val")
    _, mixed = hypermodel.datasets("mobilenet_025", 0, 0)
    _, clean = hypermodel.datasets("mobilenet_025", 0, 0, clean=True)
    mixed_weights = np.concatenate([np.asarray(w) for _, _, w in mixed])
    clean_weights = np.concatenate([np.asarray(w) for _, _, w in clean])
    assert len(clean_weights) == len(val) and len(mixed_weights) == 2 * len(val)
    # Each film's first copy weighs what the film weighs: the loss is the mean of clean and shifted.
    np.testing.assert_allclose(mixed_weights[:len(val)], mixed_weights[len(val):])
    copies = hypermodel.datasets.copies
    first = copies.variants(val, len(data.images))[:, 1] - len(data.images)
    np.testing.assert_array_equal(copies.sources[first], val)
    np.testing.assert_allclose(clean_weights, data.sample_weights("val"), rtol=1e-6)


def test_the_mixed_objective_needs_copies(tmp_path):
    with pytest.raises(UserError, match="--shift-copies"):
        new_config(str(tmp_path / "r"), None, shift_objective="mixed")


@pytest.mark.parametrize("setting", [dict(shift_objective="worst", shift_copies=2), dict(val_sources="random")])
def test_a_library_caller_gets_the_flags_choices_too(tmp_path, setting):
    with pytest.raises(UserError, match="is not one of"):
        new_config(str(tmp_path / "r"), None, **setting)


def test_a_variant_per_label_is_drawn_each_epoch_deterministically():
    images = np.arange(12, dtype=np.float32).reshape(12, 1)
    variants = np.array([[0, 4, 8], [1, 5, 9], [2, 6, 10], [3, 7, 11]])

    def epochs(seed):
        ds = pipeline.make_dataset(images, np.zeros(4, int), None, 2, batch_size=2, seed=seed, rows=variants)
        return [np.concatenate([np.asarray(b[0]).ravel() for b in ds]).tolist() for _ in range(4)]

    first = epochs(1)
    assert first == epochs(1)
    for shown in first:
        assert [int(v) % 4 for v in shown] == [0, 1, 2, 3], "label i shows one of its own rows"
    assert len({tuple(e) for e in first}) > 1, "other variants in other epochs"


def test_standardised_films_look_alike_whatever_their_exposure(tmp_path):
    classifier = XrayClassifier(3, SIZE, ("vanilla_cnn",), "none", intensity="standardize")
    model = classifier.build(keras_tuner.HyperParameters())
    rng = np.random.default_rng(0)
    films = rng.integers(40, 160, (4, SIZE, SIZE, 1)).astype(np.uint8)
    brighter = np.clip(films.astype(int) * 1.5 + 10, 0, 255).astype(np.uint8)
    same = np.asarray(model(films)), np.asarray(model(brighter))
    np.testing.assert_allclose(*same, atol=2e-2)
    as_stored = XrayClassifier(3, SIZE, ("vanilla_cnn",), "none").build(keras_tuner.HyperParameters())
    assert np.abs(np.asarray(as_stored(films)) - np.asarray(as_stored(brighter))).max() > 1e-3
    # The step is built-in layers: a plain-Keras process loads the model in safe mode.
    model.save(tmp_path / "m.keras")
    out = plain_keras_outputs([tmp_path / "m.keras"], films, tmp_path)[str(tmp_path / "m.keras")]
    np.testing.assert_allclose(out["output"], same[0], atol=1e-5)


def test_standardised_activations_are_another_cache_entry(copied):
    data, _, cache = copied
    standardised = ActivationCache(XrayClassifier(3, SIZE, ("mobilenet_025",), "imagenet", intensity="standardize"),
                                   data.images, cache.folder, progress=False)
    assert standardised.entry("mobilenet_025") != cache.entry("mobilenet_025")


def test_a_new_job_trains_against_shift_and_a_resumed_one_keeps_its_own_settings(tmp_path):
    from cxr_tuner.search.engine.config import shift_settings

    left_out = dict(intensity=None, shift_copies=None, shift_objective=None)
    assert shift_settings(tmp_path / "new", False, **left_out) == {"intensity": "standardize", "shift_copies": 2}
    old = new_config(str(tmp_path / "old"), None)  # as a run of an earlier version: films as stored, no copies
    old.save()
    assert shift_settings(old.run_dir, False, **left_out) == {"intensity": "as_stored", "shift_copies": 0,
                                                              "shift_objective": "clean"}
    assert shift_settings(old.run_dir, True, **left_out)["shift_copies"] == 2, "--overwrite starts a new job"
    assert shift_settings(old.run_dir, False, **{**left_out, "shift_copies": 3})["shift_copies"] == 3
