"""Activation cache: exact activations, keyed entries, and trials that match image trials.

The backbone is MobileNet (alpha 0.25) at 32 px with random weights saved to a file
and passed as ``--weights PATH``: a pretrained-style run (frozen part, unfreeze depths)
without ImageNet weights.
"""

import json

import keras
import keras_tuner
import numpy as np
import pytest
import tensorflow as tf

from cxr_tuner.hypermodels.cutting import (ActivationClassifier, cut_layer, frozen_image_model, frozen_model,
                                without_graph_rewrites)
from cxr_tuner.hypermodels.classifier import OBJECTIVE, XrayClassifier
from cxr_tuner.hypermodels.registry import get_backbone
from cxr_tuner.search.tuning import activations as features, tuner
from cxr_tuner.search.engine import dataset
from cxr_tuner.search.final import retrain
from cxr_tuner.search.engine.config import new_config
from cxr_tuner.search.engine.layout import RunLayout
from cxr_tuner.search.tuning.activations import trial_hypermodel
from cxr_tuner.search.run import run_search

BACKBONE = "mobilenet_025"
SIZE = 32


def _weights_file(path, seed):
    """Random weights whose BatchNorm statistics fit their own activations.

    With the initial statistics (mean 0, variance 1) activations shrink block after
    block to ~1e-17 and every comparison below would hold trivially; one pass in
    training mode with momentum 0 sets each layer's statistics to what it sees.
    """
    keras.utils.set_random_seed(seed)
    base = get_backbone(BACKBONE).constructor(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    base(np.random.default_rng(seed).uniform(-1, 1, (64, SIZE, SIZE, 3)).astype("float32"), training=True)
    base.save_weights(path)
    return str(path)


@pytest.fixture(scope="module")
def weights_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    return [_weights_file(folder / f"w{seed}.weights.h5", seed) for seed in (0, 1)]


@pytest.fixture(scope="module")
def run_data(tmp_path_factory, demo_data, weights_files):
    config = new_config(str(tmp_path_factory.mktemp("run") / "r"), str(demo_data), backbones=(BACKBONE,),
                        image_size=SIZE, weights=weights_files[0], batch_size=16, seed=5)
    return dataset.prepare(config, progress=False)


def _classifier(data, weights):
    return XrayClassifier(len(data.config.class_names), SIZE, (BACKBONE,), weights)


def _cache(data, weights, folder):
    return features.ActivationCache(_classifier(data, weights), data.images, folder, progress=False)


def _fresh(data, weights, cut):
    """Activations at ``cut`` from a fresh model run on the images, not from the cache."""
    model = frozen_image_model(_classifier(data, weights), BACKBONE)
    return frozen_model(model, None, [cut]).predict(np.asarray(data.images), verbose=0)


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_cached_activations_equal_a_fresh_forward_pass(run_data, weights_files, tmp_path, depth):
    cached = _cache(run_data, weights_files[0], tmp_path).activations(BACKBONE, depth)
    fresh = _fresh(run_data, weights_files[0], cut_layer(get_backbone(BACKBONE), depth))
    assert cached.shape == fresh.shape and cached.dtype == np.float32
    assert fresh.std() > 0.05  # activations that carry signal, not ~0
    np.testing.assert_allclose(cached, fresh, rtol=1e-5, atol=1e-5 * np.abs(fresh).max())


def test_shallower_cuts_derive_from_the_deepest_cached_one(run_data, weights_files, tmp_path, monkeypatch):
    cache = _cache(run_data, weights_files[0], tmp_path)
    cache.activations(BACKBONE, 3)
    entry = cache.entry(BACKBONE)
    for depth in (0, 1):
        (entry / f"{cut_layer(get_backbone(BACKBONE), depth)}.json").unlink()
    sources = []
    real = features.frozen_model
    monkeypatch.setattr(features, "frozen_model", lambda m, source, cuts: sources.append(source) or real(m, source, cuts))
    derived = cache.activations(BACKBONE, 0)
    assert sources == [cut_layer(get_backbone(BACKBONE), 2)]
    fresh = _fresh(run_data, weights_files[0], "head_pool")
    np.testing.assert_allclose(derived, fresh, rtol=1e-5, atol=1e-5 * np.abs(fresh).max())


def test_a_second_request_reads_the_cache_without_a_forward_pass(run_data, weights_files, tmp_path, monkeypatch):
    _cache(run_data, weights_files[0], tmp_path).activations(BACKBONE, 2)
    passes = []
    monkeypatch.setattr(features.extraction, "run", lambda *args: passes.append(args))
    again = _cache(run_data, weights_files[0], tmp_path)
    assert [again.activations(BACKBONE, d).shape[0] for d in range(4)] == [len(run_data.images)] * 4
    assert passes == []


def test_entries_are_keyed_by_weights_size_and_cut(run_data, weights_files, tmp_path):
    entries = {_cache(run_data, w, tmp_path).entry(BACKBONE) for w in weights_files}
    other_size = features.ActivationCache(
        XrayClassifier(3, SIZE * 2, (BACKBONE,), weights_files[0]), run_data.images, tmp_path, progress=False)
    entries.add(other_size.entry(BACKBONE))
    assert len(entries) == 3
    cache = _cache(run_data, weights_files[1], tmp_path)
    cache.activations(BACKBONE, 1)
    metas = [json.loads(p.read_text()) for p in sorted(cache.entry(BACKBONE).glob("*.json"))]
    assert len({m["cut"] for m in metas}) == 4
    assert {m["weights"] for m in metas} == {features.weights_identity(get_backbone(BACKBONE), weights_files[1], SIZE)}
    changed = run_data.images.copy()
    changed[0, 0, 0, 0] ^= 1
    assert features.images_identity(changed) != features.images_identity(run_data.images)


def _hp(depth):
    hp = keras_tuner.HyperParameters()
    hp.Fixed("backbone", BACKBONE)
    hp.Fixed("unfreeze_depth", depth)
    hp.Fixed("head_depth", 1)
    hp.Fixed("learning_rate", 3e-3)
    return hp


@pytest.mark.parametrize("depth", [0, 2])
def test_a_trial_on_cached_activations_scores_as_the_same_trial_on_images(run_data, weights_files, tmp_path, depth):
    # Same seed, same shuffled batches, same initial weights (the top model is cut out
    # of the same image model): only float summation order differs, so the
    # weighted validation loss agrees far below any difference that could reorder trials.
    weights = weights_files[0]
    keras.utils.set_random_seed(7)
    image_model = _classifier(run_data, weights).build(_hp(depth))
    on_images = image_model.fit(run_data.dataset("train", shuffle=True), epochs=3,
                                validation_data=run_data.dataset("val"), verbose=0)
    hypermodel = ActivationClassifier(
        _classifier(run_data, weights), features.TrialData(run_data, _cache(run_data, weights, tmp_path)))
    hp = _hp(depth)
    keras.utils.set_random_seed(7)
    top = hypermodel.build(hp)
    assert len(top.layers) < len(image_model.layers)
    on_features = hypermodel.fit(hp, top, epochs=3, verbose=0)
    curve = on_images.history[OBJECTIVE]
    # The trial learns (its training loss falls; validation's may turn up again), so equal curves mean something.
    assert on_images.history["loss"][0] - on_images.history["loss"][-1] > 1e-2
    np.testing.assert_allclose(on_features.history[OBJECTIVE], curve, rtol=1e-4)


def test_a_fits_batches_do_not_depend_on_what_trained_before_it_in_the_process(run_data, weights_files, tmp_path):
    # A worker of a distributed search, or a resumed search, runs a trial after other
    # trials than one uninterrupted process does; its data must not know.
    data = features.TrialData(run_data, _cache(run_data, weights_files[0], tmp_path))

    def epochs(depth, initial_epoch, count=2):
        train, _ = data(BACKBONE, depth, initial_epoch)
        return [np.concatenate([np.asarray(x) for x, _, _ in train]) for _ in range(count)]

    fresh = epochs(0, 0)
    epochs(0, 0), epochs(0, 3), epochs(2, 0)  # other trials ran in between
    again = epochs(0, 0)
    for first, second in zip(fresh, again):
        np.testing.assert_array_equal(first, second)
    assert not np.array_equal(fresh[0], fresh[1])  # still reshuffled every epoch
    np.testing.assert_array_equal(epochs(0, 3)[0], epochs(0, 3)[0])
    assert not np.array_equal(epochs(0, 3)[0], fresh[0])  # a continued fit does not replay epoch 1


def test_search_of_a_pretrained_backbone_trains_on_cached_activations(tmp_path, demo_data, weights_files):
    run_dir = tmp_path / "run"
    config = new_config(str(run_dir), str(demo_data), backbones=(BACKBONE,), image_size=SIZE,
                        weights=weights_files[0], tuner="random", max_trials=4, max_epochs=1,
                        batch_size=16, seed=2)
    gradients_before = set(tuner._custom_gradients())
    best = run_search(config, log=lambda line: None)
    assert best["trials"] == 4 and best["best"] is not None
    # Each trial's traced step would stay reachable from TF's gradient registry (a leak).
    assert set(tuner._custom_gradients()) == gradients_before
    assert "unfreeze_depth" in best["best"]["hyperparameters"]
    (entry,) = (RunLayout(run_dir).activations).iterdir()
    assert (entry / "head_pool.f32").is_file()
    memory = RunLayout(run_dir).memory.read_text().splitlines()
    assert len(memory) == 4
    # Trials ran without Grappler; what the process runs next (evaluate, export) has it back.
    assert not tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer", False)


def test_graph_rewrites_come_back_when_training_fails():
    with pytest.raises(RuntimeError), without_graph_rewrites():
        assert tf.config.optimizer.get_experimental_options()["disable_meta_optimizer"]
        raise RuntimeError("a trial failed")
    assert not tf.config.optimizer.get_experimental_options()["disable_meta_optimizer"]


def test_retraining_without_augmentation_on_cached_activations_saves_the_image_models_result(run_data, tmp_path):
    # Winners retrained without augmentation train above the freeze boundary on the
    # cache, then their values go into the whole image model: the saved model must be
    # the one training on images gives, and score on validation images what training saw.
    hp = _hp(2)
    rows = run_data.indices("val")
    on_cache = retrain._fit_and_keep(trial_hypermodel(run_data)[0], hp, 3, 3, tmp_path / "cache", rows=rows)
    on_images = retrain._fit_and_keep(retrain.ImageTraining(run_data, augment=False), hp, 3, 3, tmp_path / "images",
                                      rows=rows)
    assert on_cache[OBJECTIVE] == pytest.approx(on_images[OBJECTIVE], rel=1e-4)
    saved = keras.saving.load_model(tmp_path / "cache" / "model.keras")
    assert saved.input.shape[1:] == (SIZE, SIZE, 1)
    scores = saved.evaluate(run_data.dataset("val"), return_dict=True, verbose=0)
    assert scores["weighted_loss"] == pytest.approx(on_cache[OBJECTIVE], rel=1e-4)
    # The validation probabilities saved beside it (predicted from the cache) are the image model's.
    with np.load(tmp_path / "cache" / "validation.npz") as kept:
        assert np.array_equal(kept["rows"], rows)
        assert np.abs(kept["probabilities"] - saved.predict(np.asarray(run_data.images[rows]), verbose=0)).max() < 1e-4
