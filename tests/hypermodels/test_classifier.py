"""The HyperModel's search space, defaults, freezing and weight handling."""

import hashlib
from pathlib import Path

import keras
import keras_tuner
import numpy as np
import pytest

from cxr_tuner.data.errors import UserError
from cxr_tuner.hypermodels.classifier import OBJECTIVE, XrayClassifier
from cxr_tuner.hypermodels.preprocess import preprocess
from cxr_tuner.hypermodels.registry import get_backbone
from cxr_tuner.hypermodels.weights import resolve_weights, weights_origin


def _build(backbones, weights="none", hp=None, size=32):
    hp = hp or keras_tuner.HyperParameters()
    return XrayClassifier(3, size, backbones, weights=weights).build(hp), hp


def test_defaults_of_the_search_space():
    _, hp = _build(["mobilenet_025", "vanilla_cnn"])
    assert hp.values == {"backbone": "mobilenet_025", "head_depth": 1, "head_units_0": 128,
                         "dropout": 0.2, "learning_rate": 1e-3}


def test_from_scratch_backbones_train_whole_and_have_no_unfreeze_depth():
    model, hp = _build(["mobilenet_025"])
    assert "unfreeze_depth" not in hp.values
    assert all(layer.trainable for layer in model.layers)


def test_unfreeze_depth_trains_only_top_blocks_and_keeps_batchnorm_frozen(tmp_path, monkeypatch):
    weights = tmp_path / "mobilenet.weights.h5"
    keras.applications.MobileNet(alpha=0.25, include_top=False, weights=None,
                                 input_shape=(32, 32, 3)).save_weights(weights)
    hp = keras_tuner.HyperParameters()
    hp.Fixed("backbone", "mobilenet_025")
    with hp.conditional_scope("backbone", ["mobilenet_025"]):
        hp.Fixed("unfreeze_depth", 1)
    model, _ = _build(["mobilenet_025"], weights=str(weights), hp=hp)
    trainable = {layer.name for layer in model.layers if layer.trainable_weights}
    assert "conv_pw_13" in trainable and "conv_dw_13" in trainable
    assert "conv_pw_12" not in trainable and "conv_pw_13_bn" not in trainable
    assert "predictions" in trainable


def test_compiled_metric_is_the_class_weighted_validation_loss():
    model, _ = _build(["vanilla_cnn"])
    x = np.random.default_rng(0).integers(0, 255, (12, 32, 32, 1)).astype("uint8")
    y = keras.utils.to_categorical(np.arange(12) % 3, 3)
    w = np.array([4.0, 1.0, 1.0] * 4, "float32")
    history = model.fit(x, y, sample_weight=w, validation_data=(x, y, w), epochs=1, verbose=0)
    loss = keras.losses.categorical_crossentropy(y, model.predict(x, verbose=0)).numpy()
    expected = float((loss * w).sum() / w.sum())
    assert OBJECTIVE in history.history
    assert model.evaluate(x, y, sample_weight=w, verbose=0, return_dict=True)["weighted_loss"] \
        == pytest.approx(expected, rel=1e-4)


def test_imagenet_weights_missing_offline_say_which_file_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr("keras.src.utils.file_utils.get_file", offline)
    with pytest.raises(UserError, match=r"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1\.0_224_no_top\.h5 into .*models"):
        resolve_weights(get_backbone("mobilenet_v2"), "imagenet", 224)


def test_shipped_mobilenet_025_weights_serve_when_the_keras_cache_is_empty(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr("keras.src.utils.file_utils.get_file", lambda *a, **k: pytest.fail("tried to download"))
    path = resolve_weights(get_backbone("mobilenet_025"), "imagenet", 64)
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert digest == "dbdb03ee2a22fd895301636cd328b234bb3a9952358f436d82f46b81e0d5b0bf"
    base = get_backbone("mobilenet_025").constructor(include_top=False, weights=path, input_shape=(64, 64, 3))
    assert base.count_params() == 218_544
    assert (Path(path).parent / "NOTICE").is_file()


def test_weights_origin_says_in_words_what_resolve_weights_picks(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    spec = get_backbone("mobilenet_025")
    assert Path(resolve_weights(spec, "imagenet", 96)).name == spec.weight_file(96)  # the shipped copy
    assert weights_origin(spec, "imagenet", 96) == ("ImageNet weights, shipped with the package "
                                                    "(hypermodels/assets/mobilenet_2_5_224_tf_no_top.h5)")
    cached = tmp_path / "models" / spec.weight_file(96)
    cached.parent.mkdir()
    cached.write_bytes(b"")
    assert resolve_weights(spec, "imagenet", 96) == "imagenet"  # the Keras cache comes first
    assert weights_origin(spec, "imagenet", 96) == f"ImageNet weights from the Keras cache ({cached})"
    assert weights_origin(spec, str(cached), 96) == f"weights from the file {cached}"
    assert weights_origin(spec, "none", 96) == "--weights none"
    assert weights_origin(get_backbone("vanilla_cnn"), "imagenet", 96) == "no pretrained weights exist for it"


def test_weights_path_that_does_not_exist_is_a_user_error():
    with pytest.raises(UserError, match="does not exist"):
        resolve_weights(get_backbone("resnet50"), "/nowhere/weights.h5", 224)


@pytest.mark.parametrize("mode,expected", [("tf", -1.0), ("unit", 0.0), ("raw", 0.0)])
def test_preprocess_takes_raw_grayscale_uint8(mode, expected):
    out = _preprocessor(mode)(np.zeros((1, 4, 4, 1), "uint8"))
    assert tuple(out.shape) == (1, 4, 4, 3)
    assert float(out[0, 0, 0, 0]) == pytest.approx(expected)


@pytest.mark.parametrize("mode,application", [("caffe", "resnet50"), ("tf", "mobilenet"),
                                              ("torch", "densenet"), ("raw", "efficientnet")])
def test_preprocess_matches_the_backbones_own_preprocess_input(mode, application):
    grey = np.random.default_rng(1).integers(0, 255, (1, 4, 4, 1)).astype("uint8")
    ours = _preprocessor(mode)(grey)
    rgb = np.repeat(grey, 3, axis=-1).astype("float32")
    theirs = getattr(keras.applications, application).preprocess_input(rgb)
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4)


def _preprocessor(mode):
    inputs = keras.Input((4, 4, 1), dtype="uint8")
    return keras.Model(inputs, preprocess(inputs, mode))
