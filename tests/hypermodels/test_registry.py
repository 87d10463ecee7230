"""Every registered backbone builds, and its Grad-CAM layer and cut points exist."""

import keras
import keras_tuner
import numpy as np
import pytest

from data.errors import UserError
from hypermodels.classifier import XrayClassifier
from hypermodels.registry import BACKBONES, backbone_names, get_backbone


@pytest.mark.parametrize("name", backbone_names())
def test_backbone_builds_small_with_its_layers(name):
    spec = get_backbone(name)
    size = max(spec.min_size, 32)
    model = XrayClassifier(3, size, [name], weights="none").build(keras_tuner.HyperParameters())
    assert model.input.dtype == "uint8" and model.input.shape[1:] == (size, size, 1)
    assert model.output.shape[-1] == 3
    model.get_layer(spec.last_conv_layer)
    for point in spec.unfreeze_points:
        model.get_layer(point)
    probs = model.predict(np.zeros((2, size, size, 1), "uint8"), verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    keras.backend.clear_session()


def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(UserError) as error:
        get_backbone("resnet5O")
    for name in BACKBONES:
        assert name in str(error.value)


@pytest.mark.parametrize("name", [n for n in backbone_names() if BACKBONES[n].pretrainable])
def test_pretrained_backbones_name_their_weight_file(name):
    assert get_backbone(name).weight_file(224).endswith(".h5")
