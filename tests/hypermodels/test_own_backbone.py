"""A backbone of one's own: a .keras file, checked in one-line errors, built flat with its own weights."""

import dataclasses

import keras
import keras_tuner
import numpy as np
import pytest

from cxr_tuner.data.errors import UserError
from cxr_tuner.hypermodels.classifier import XrayClassifier
from cxr_tuner.hypermodels.cutting import ActivationClassifier, frozen_image_model, is_cacheable
from cxr_tuner.hypermodels.backbones.own import own_backbone
from cxr_tuner.hypermodels.registry import BUILT_IN, Backbones
from cxr_tuner.hypermodels.weights import resolve_weights, weights_origin
from cxr_tuner.search.evaluation import gradcam

CUTS = ["block2_out", "block1_out"]


def _tiny(head: bool = False) -> keras.Model:
    """Two residual blocks on a stem; with ``head``, a pooled classifier on top (which the backbone leaves out)."""
    inputs = keras.Input((None, None, 3), name="rgb")
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="stem_conv")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.Activation("relu", name="stem_relu")(x)
    for i in (1, 2):
        y = keras.layers.Conv2D(8, 3, padding="same", name=f"block{i}_conv")(x)
        y = keras.layers.BatchNormalization(name=f"block{i}_bn")(y)
        x = keras.layers.Add(name=f"block{i}_add")([x, y])
        x = keras.layers.Activation("relu", name=f"block{i}_out")(x)
    x = keras.layers.Conv2D(16, 1, name="top_conv")(x)
    x = keras.layers.Activation("relu", name="top_relu")(x)
    if head:
        x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
        x = keras.layers.Dense(14, activation="sigmoid", name="chexnet_14")(x)
    return keras.Model(inputs, x, name="tiny")


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("own") / "tiny.keras"
    _tiny(head=True).save(path)
    return path


def _build(name, weights, specs, size=32):
    hp = keras_tuner.HyperParameters()
    return XrayClassifier(3, size, [name], weights=weights, specs=specs).build(hp), hp


def test_own_backbone_builds_flat_with_the_files_weights(tiny_file):
    spec = own_backbone("tiny_own", tiny_file, "torch", CUTS)
    specs = Backbones(own=(spec,))
    assert own_backbone("tiny_own", tiny_file, "torch", CUTS) == spec  # a config loaded again: the same spec
    assert specs.get("tiny_own") is spec
    assert spec.last_conv_layer == "top_relu" and spec.unfreeze_points == tuple(CUTS) and spec.pretrainable
    model, _ = _build("tiny_own", "imagenet", specs)
    names = [layer.name for layer in model.layers]
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    assert set(CUTS) | {"top_relu"} <= set(names) and "chexnet_14" not in names  # the file's head is left out
    for cut in CUTS:
        assert len(model.get_layer(cut).output.shape) == 4
    assert gradcam.default_layer(model, specs) == "top_relu"
    source = keras.saving.load_model(tiny_file, compile=False)
    for layer in ("stem_conv", "block2_conv", "top_conv", "block1_bn"):
        for ours, theirs in zip(model.get_layer(layer).get_weights(), source.get_layer(layer).get_weights()):
            np.testing.assert_array_equal(ours, theirs)
    random, _ = _build("tiny_own", "none", specs)
    assert not np.array_equal(random.get_layer("top_conv").get_weights()[0], source.get_layer("top_conv").get_weights()[0])
    probs = model.predict(np.zeros((2, 32, 32, 1), "uint8"), verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    keras.backend.clear_session()


def test_own_backbone_is_pretrained_and_its_frozen_part_caches(tiny_file):
    specs = Backbones(own=(own_backbone("tiny_own", tiny_file, "torch", CUTS),))
    spec = specs.get("tiny_own")
    assert resolve_weights(spec, "imagenet", 32) == spec.file and resolve_weights(spec, "none", 32) is None
    assert "weights from its own file" in weights_origin(spec, "imagenet", 32)
    assert is_cacheable(spec, "imagenet") and not is_cacheable(spec, "none")
    classifier = XrayClassifier(3, 32, ["tiny_own"], weights="imagenet", specs=specs)
    template = frozen_image_model(classifier, "tiny_own")
    hp = keras_tuner.HyperParameters()
    hp.values.update(backbone="tiny_own", unfreeze_depth=2)
    above = ActivationClassifier(classifier, datasets=None, templates=lambda name: template).build(hp)
    assert above.input.shape[1:] == template.get_layer("block1_out").output.shape[1:]
    assert {"block2_conv", "top_conv"} <= {layer.name for layer in above.layers}
    keras.backend.clear_session()


def _one_line_error(*args, **kwargs) -> str:
    with pytest.raises(UserError) as error:
        own_backbone(*args, **kwargs)
    message = str(error.value)
    assert "\n" not in message and message.startswith("backbone "), message
    return message


def test_each_mistake_is_one_line_naming_the_entry_and_what_is_allowed(tiny_file, tmp_path):
    assert "does not exist" in _one_line_error("mine", tmp_path / "gone.keras", "torch", CUTS)
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip")
    assert "does not load as a Keras model" in _one_line_error("mine", broken, "torch", CUTS)
    assert "torch" in _one_line_error("mine", tiny_file, "imagenet", CUTS)  # lists the modes
    assert "registry already has" in _one_line_error("resnet50", tiny_file, "torch", CUTS)
    assert "letter" in _one_line_error("keras:Mine", tiny_file, "torch", CUTS)
    assert "'block9_out' is not a layer" in _one_line_error("mine", tiny_file, "torch", ["block9_out"])
    assert "4-D" in _one_line_error("mine", tiny_file, "torch", ["gap"])
    assert "every path" in _one_line_error("mine", tiny_file, "torch", ["block2_bn"])  # the skip bypasses it
    assert "top down" in _one_line_error("mine", tiny_file, "torch", ["block1_out", "block2_out"])
    assert "last_conv_layer 'chexnet_14'" in _one_line_error("mine", tiny_file, "torch", CUTS, "chexnet_14")
    grey = tmp_path / "grey.keras"
    keras.Sequential([keras.Input((32, 32, 1)), keras.layers.Conv2D(4, 3, name="c")]).save(grey)
    assert "3 channels" in _one_line_error("mine", grey, "torch", [])
    with pytest.raises(UserError) as error:
        Backbones(own=(dataclasses.replace(own_backbone("mine", tiny_file, "torch", CUTS), name="resnet50"),))
    assert "\n" not in str(error.value) and "the registry's" in str(error.value)


def test_one_runs_own_backbone_is_no_other_runs(tiny_file):
    """Two runs' values, one name with other settings: each answers its own; the built-ins know neither."""
    first = Backbones(own=(own_backbone("tiny_own", tiny_file, "torch", CUTS),))
    second = Backbones(own=(own_backbone("tiny_own", tiny_file, "tf", CUTS[:1]),))
    assert first.get("tiny_own").preprocess == "torch" and first.get("tiny_own").unfreeze_points == tuple(CUTS)
    assert second.get("tiny_own").preprocess == "tf" and second.get("tiny_own").unfreeze_points == tuple(CUTS[:1])
    with pytest.raises(UserError, match="Unknown backbone 'tiny_own'"):
        BUILT_IN.get("tiny_own")
