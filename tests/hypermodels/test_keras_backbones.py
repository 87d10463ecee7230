"""keras:NAME backbones: described from the model itself, and right where the registry was described by hand."""

import keras
import keras_tuner
import numpy as np
import pytest

from cxr_tuner.data.errors import UserError
from cxr_tuner.hypermodels import discovery
from cxr_tuner.hypermodels.classifier import XrayClassifier
from cxr_tuner.hypermodels.preprocess import preprocess
from cxr_tuner.hypermodels.backbones.applications import KERAS_PREFIX, keras_application_names, preprocess_mode_of
from cxr_tuner.hypermodels.backbones.builtin import BACKBONES
from cxr_tuner.hypermodels.backbones.spec import file_safe
from cxr_tuner.hypermodels.registry import BUILT_IN, get_backbone
from cxr_tuner.search.evaluation import gradcam

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
    # What keras:NAME uses: the same, with nothing to name.
    assert discovery.describe(model) == discovery.Description(last, DIFFERENT_CUTS.get(name, spec.unfreeze_points))
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


# MobileNetV3Small: its last activation is Keras-named, so Grad-CAM's layer is a named Identity after it;
# ConvNeXtTiny: its blocks end in ``x + y`` (a Keras op), so its cuts are too.
@pytest.mark.parametrize("name, renamed", [("keras:MobileNetV3Small", 1), ("keras:ConvNeXtTiny", 4)])
def test_keras_backbone_builds_with_its_cuts_and_gradcam_layer(name, renamed):
    spec = get_backbone(name)
    assert get_backbone(name) is spec  # built once per process
    assert spec.name == name and spec.preprocess == "raw" and spec.min_size == 32 and spec.default_size == 224
    assert len(spec.unfreeze_points) == 3 and spec.pretrainable and len(spec.constructor.renames) == renamed
    model = XrayClassifier(3, 32, [name], weights="none").build(keras_tuner.HyperParameters())
    assert model.name == "cxr_" + file_safe(name) and ":" not in model.name
    assert BUILT_IN.of_model(model.name) == name and gradcam.default_layer(model, BUILT_IN) == spec.last_conv_layer
    for layer in (spec.last_conv_layer, *spec.unfreeze_points):
        assert len(model.get_layer(layer).output.shape) == 4 and not isinstance(model.get_layer(layer), keras.Model)
    # Flat where it matters: the cuts and Grad-CAM's layer are tensors of the model's own graph.
    keras.Model(model.input, [model.get_layer(c).output for c in spec.unfreeze_points])
    activations, scores = gradcam.gradcam_model(model, spec.last_conv_layer)(np.zeros((1, 32, 32, 1), "uint8"))
    assert scores.shape == (1, 3)
    probs = np.asarray(model(np.zeros((2, 32, 32, 1), "uint8")))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    keras.backend.clear_session()


def test_naming_a_keras_op_keeps_the_model_and_its_values():
    model = keras.applications.ConvNeXtTiny(include_top=False, weights=None, input_shape=(32, 32, 3))
    found = discovery.describe(model)
    rebuilt = discovery.with_named_outputs(model, dict(found.renames))
    assert {c for c in found.cuts} <= {layer.name for layer in rebuilt.layers}
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(rebuilt(images)), np.asarray(model(images)), atol=1e-5)
    keras.backend.clear_session()


class _Asked(Exception):
    pass


@pytest.mark.parametrize("name", ["MobileNetV3Small", "ConvNeXtTiny", "MobileNetV2"])
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

    from cxr_tuner.hypermodels.weights import resolve_weights

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


def test_pretrained_keras_backbone_cuts_for_the_activation_cache(tmp_path):
    # --weights PATH stands in for ImageNet (offline): the values load, and a trial above a cut
    # starts from them, as for a registry backbone.
    from cxr_tuner.hypermodels.cutting import ActivationClassifier, frozen_image_model

    name = "keras:MobileNetV3Small"
    path = tmp_path / "mnv3.weights.h5"
    keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(path)
    source = keras.applications.MobileNetV3Small(include_top=False, weights=str(path), input_shape=(32, 32, 3))
    classifier = XrayClassifier(3, 32, [name], weights=str(path))
    template = frozen_image_model(classifier, name)
    spec = get_backbone(name)
    cut = spec.unfreeze_points[1]
    hp = keras_tuner.HyperParameters()
    hp.values.update(backbone=name, unfreeze_depth=2)
    above = ActivationClassifier(classifier, datasets=None, templates=lambda n: template).build(hp)
    assert above.input.shape[1:] == template.get_layer(cut).output.shape[1:]
    for layer in ("conv_1", "expanded_conv_10_project"):
        np.testing.assert_array_equal(above.get_layer(layer).get_weights()[0], source.get_layer(layer).get_weights()[0])
        assert above.get_layer(layer).trainable and not template.get_layer(layer).trainable
    keras.backend.clear_session()
