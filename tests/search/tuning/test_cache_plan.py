"""Activation cache size: the estimate, the refusal, the float16 cache and the size budget.

MobileNet (alpha 0.25) at 32 px with random weights from a file, as in test_activations.
"""

import keras_tuner
import numpy as np
import pytest

from cxr_tuner.data.errors import UserError
from cxr_tuner.hypermodels.registry import BUILT_IN, get_backbone
from cxr_tuner.search.tuning import cache_plan
from cxr_tuner.search.engine import dataset
from cxr_tuner.search.engine.config import new_config
from cxr_tuner.search.tuning.activations import trial_hypermodel
from cxr_tuner.search.run import run_search
from tests.search.tuning.test_activations import BACKBONE, SIZE, _weights_file

DEPTHS = len(get_backbone(BACKBONE).unfreeze_points) + 1


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    return _weights_file(tmp_path_factory.mktemp("weights") / "w.weights.h5", 0)


def _config(run_dir, demo_data, weights_file, **settings):
    return new_config(str(run_dir), str(demo_data), backbones=(BACKBONE,), image_size=SIZE,
                      weights=weights_file, batch_size=16, seed=5, max_epochs=1, factor=2, **settings)


def _prepared(tmp_path, demo_data, weights_file, **settings):
    data = dataset.prepare(_config(tmp_path / "run", demo_data, weights_file, **settings), progress=False)
    return trial_hypermodel(data, progress=False)


def _hp(depth):
    hp = keras_tuner.HyperParameters()
    hp.values.update(backbone=BACKBONE, unfreeze_depth=depth)
    return hp


def _plan(cache, dtype="float32", budget=None):
    return cache_plan.plan_cache(lambda b: cache_plan.cut_shapes(cache.image_model, b, specs=BUILT_IN), (BACKBONE,),
                                 cache.classifier.weights, len(cache.images), dtype, budget, specs=BUILT_IN)


def test_the_estimate_is_the_size_the_cache_takes_on_disk(tmp_path, demo_data, weights_file):
    _, cache = _prepared(tmp_path, demo_data, weights_file)
    plan = _plan(cache)
    cache.warm([BACKBONE])
    assert plan.depths == {BACKBONE: DEPTHS}
    assert cache_plan.entry_bytes(cache.entry(BACKBONE)) == plan.cached_bytes() > 0


def test_float16_cache_takes_half_the_space_and_agrees_with_float32(tmp_path, demo_data, weights_file):
    _, exact = _prepared(tmp_path / "a", demo_data, weights_file)
    _, half = _prepared(tmp_path / "b", demo_data, weights_file, cache_dtype="float16")
    exact.warm([BACKBONE])
    half.warm([BACKBONE])
    assert 2 * cache_plan.entry_bytes(half.entry(BACKBONE)) == cache_plan.entry_bytes(exact.entry(BACKBONE))
    assert 2 * _plan(half, "float16").cached_bytes() == _plan(exact).cached_bytes()
    for depth in range(DEPTHS):
        a, b = np.asarray(exact.activations(BACKBONE, depth)), np.asarray(half.activations(BACKBONE, depth))
        assert b.dtype == np.float16 and a.shape == b.shape
        # float16 keeps 11 significant bits: a relative error of at most 2**-11 per value.
        np.testing.assert_allclose(b.astype(np.float32), a, rtol=2 ** -11, atol=1e-6)


def test_a_disk_too_small_for_the_cache_is_refused_in_one_line_before_writing(
        tmp_path, demo_data, weights_file, monkeypatch):
    monkeypatch.setattr(cache_plan, "free_bytes", lambda folder: 1000)
    config = _config(tmp_path / "run", demo_data, weights_file)
    with pytest.raises(UserError) as error:
        run_search(config, log=lambda line: None)
    message = str(error.value)
    assert "\n" not in message
    assert "The activation cache needs" in message and "only 1.0 KB is free" in message
    assert "--cache-dtype float16" in message and "--cache-budget" in message
    assert not list((tmp_path / "run" / "cache" / "activations").glob("*/*.json"))


def test_a_budget_leaves_the_deeper_cuts_out_and_those_depths_train_on_images(tmp_path, demo_data, weights_file):
    full = _plan(_prepared(tmp_path / "a", demo_data, weights_file)[1])
    budget = sum(full.per_image[BACKBONE][:2]) * full.n_images / 1e9  # room for depths 0 and 1 only
    lines = []
    config = _config(tmp_path / "run", demo_data, weights_file, cache_budget_gb=budget)
    run_search(config, log=lines.append)
    assert any(f"{BACKBONE} from unfreeze depth 2 train on images" in line for line in lines)
    hypermodel, cache = trial_hypermodel(dataset.prepare(config, progress=False), progress=False)
    assert cache.depths == {BACKBONE: 2}
    assert cache_plan.entry_bytes(cache.entry(BACKBONE)) == sum(full.per_image[BACKBONE][:2]) * full.n_images
    assert hypermodel.build(_hp(1)).input.shape[1:] != (SIZE, SIZE, 1)  # on activations
    assert tuple(hypermodel.build(_hp(2)).input.shape[1:]) == (SIZE, SIZE, 1)  # the whole image model
    assert hypermodel.frozen_depth(_hp(2)) is None  # so fit gives it images


def test_the_budget_is_spent_shallowest_depth_first_over_the_backbones():
    shapes = {"mobilenet_025": [(4,), (10,), (40,)], "resnet50": [(8,), (20,), (80,)]}
    plan = cache_plan.plan_cache(shapes.get, tuple(shapes), "imagenet", 1000, "float32",
                                 budget_gb=(4 + 8 + 10 + 20) * 4 * 1000 / 1e9, specs=BUILT_IN)
    assert plan.depths == {"mobilenet_025": 2, "resnet50": 2}
    assert plan.left_out() == {"mobilenet_025": (2, 40 * 4 * 1000), "resnet50": (2, 80 * 4 * 1000)}
    half = cache_plan.plan_cache(shapes.get, tuple(shapes), "imagenet", 1000, "float16", specs=BUILT_IN)
    assert half.cached_bytes() == (4 + 10 + 40 + 8 + 20 + 80) * 2 * 1000
