"""keras:NAME backbones: described from the model itself, and right where the registry was described by hand."""

import keras
import keras_tuner
import numpy as np
import pytest

from data.errors import UserError
from hypermodels import discovery
from hypermodels.classifier import XrayClassifier
from hypermodels.preprocess import preprocess
from hypermodels.registry import (BACKBONES, KERAS_PREFIX, backbone_of_model, file_safe, get_backbone,
                                  keras_application_names, preprocess_mode_of)
from search.evaluation import gradcam

# The seven registry backbones that are keras.applications models.
APPLICATIONS = ["resnet50", "inception_v3", "densenet121", "efficientnet_b0", "mobilenet_v2", "mobilenet",
                "mobilenet_025"]

# Where the discovery picks other cut points than the registry's hand-picked ones, and why
# they are equally valid.
DIFFERENT_CUTS = {
    # Every DenseNet dense layer is a block whose concatenation all paths pass through. The
    # discovery takes the three topmost (one dense layer per unfreeze step); the registry spaced
    # its steps out by hand (3, then 12 dense layers, down to the transition pool4_pool). Both
    # are single-tensor articulation points at block boundaries: they cut and cache alike.
    "densenet121": ("conv5_block15_concat", "conv5_block14_concat", "conv5_block13_concat"),
}


@pytest.mark.parametrize("name", APPLICATIONS)
def test_discovery_finds_the_registry_layers(name):
    spec = BACKBONES[name]
    size = max(spec.min_size, 32)
    model = spec.constructor(include_top=False, weights=None, input_shape=(size, size, 3))
    last = discovery.find_last_conv_layer(model)
    assert last == spec.last_conv_layer
    assert discovery.find_cut_points(model, last) == DIFFERENT_CUTS.get(name, spec.unfreeze_points)
    for cut in DIFFERENT_CUTS.get(name, ()):  # the different ones are cut points all the same
        assert model.get_layer(cut) in discovery.articulation_layers(model)
    keras.backend.clear_session()


# What each family's own preprocess_input does, by the brief's table (the discovery finds it numerically).
FAMILY_MODES = {"ConvNeXt": "raw", "EfficientNet": "raw", "MobileNetV3": "raw", "ResNet50V2": "tf",
                "ResNet101V2": "tf", "ResNet152V2": "tf", "ResNet": "caffe", "VGG": "caffe", "DenseNet": "torch",
                "MobileNet": "tf", "Inception": "tf", "Xception": "tf", "NASNet": "tf"}


@pytest.mark.parametrize("name", keras_application_names())
def test_preprocessing_equals_keras_own_preprocess_input(name):
    import sys

    application = getattr(keras.applications, name)
    mode = preprocess_mode_of(application)
    assert mode == next(m for family, m in FAMILY_MODES.items() if name.startswith(family))
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 1), dtype="uint8")
    ours = np.asarray(preprocess(keras.ops.convert_to_tensor(images), mode))
    theirs = sys.modules[application.__module__].preprocess_input(np.repeat(images, 3, -1).astype("float32"))
    np.testing.assert_allclose(ours, np.asarray(theirs), atol=1e-4)


@pytest.mark.parametrize("name", ["keras:MobileNetV3Small", "keras:EfficientNetV2B0"])
def test_keras_backbone_builds_with_its_cuts_and_gradcam_layer(name):
    spec = get_backbone(name)
    assert get_backbone(name) is spec  # built once per process
    assert spec.name == name and spec.preprocess == "raw" and spec.min_size == 32 and spec.default_size == 224
    assert len(spec.unfreeze_points) == 3 and spec.pretrainable
    model = XrayClassifier(3, 32, [name], weights="none").build(keras_tuner.HyperParameters())
    assert model.name == "cxr_" + file_safe(name) and ":" not in model.name
    assert backbone_of_model(model.name) == name and gradcam.default_layer(model) == spec.last_conv_layer
    model.get_layer(spec.last_conv_layer)
    for cut in spec.unfreeze_points:
        assert len(model.get_layer(cut).output.shape) == 4
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)  # flat: Grad-CAM works
    probs = model.predict(np.zeros((2, 32, 32, 1), "uint8"), verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    keras.backend.clear_session()


class _Asked(Exception):
    pass


@pytest.mark.parametrize("name", ["MobileNetV3Small", "EfficientNetV2B0", "MobileNetV2"])
@pytest.mark.parametrize("size", [96, 224])
def test_keras_weight_file_is_the_one_keras_looks_for(name, size, monkeypatch):
    spec = get_backbone(KERAS_PREFIX + name)
    expected = spec.weight_file(size)
    from keras.src.utils import file_utils

    asked = []

    def get_file(fname=None, *args, **kwargs):
        asked.append(fname)
        raise _Asked

    monkeypatch.setattr(file_utils, "get_file", get_file)
    with pytest.raises(_Asked):
        spec.constructor(include_top=False, weights="imagenet", input_shape=(size, size, 3))
    keras.backend.clear_session()
    assert asked == [expected]
    assert name != "MobileNetV2" or expected == BACKBONES["mobilenet_v2"].weight_file(size)


def test_offline_keras_backbone_says_which_file_to_put_where(tmp_path, monkeypatch):
    from keras.src.utils import file_utils

    from hypermodels.weights import resolve_weights

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    spec = get_backbone("keras:MobileNetV3Small")
    file_name = spec.weight_file(32)

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure")  # what Keras raises offline

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(UserError) as error:
        resolve_weights(spec, "imagenet", 32)
    keras.backend.clear_session()
    message = str(error.value)
    assert "\n" not in message and f"Put the file {file_name} into {tmp_path / 'models'}/" in message


def test_unknown_keras_name_is_one_line_saying_how_to_list_them():
    with pytest.raises(UserError) as error:
        get_backbone("keras:ConvNextTiny")
    message = str(error.value)
    assert "\n" not in message and "cxr-tuner backbones --keras" in message and "keras:ConvNeXtTiny" in message


def test_file_safe_names_keep_registry_names():
    assert [file_safe(n) for n in BACKBONES] == list(BACKBONES)
    assert file_safe("keras:ConvNeXtTiny") == "keras-ConvNeXtTiny"
