"""Every registered backbone builds, and its Grad-CAM layer and cut points exist."""

import keras
import keras_tuner
import numpy as np
import pytest

from cxr_tuner.data.errors import UserError
from cxr_tuner.hypermodels.classifier import XrayClassifier
from cxr_tuner.hypermodels.backbones.builtin import BACKBONES
from cxr_tuner.hypermodels.registry import backbone_names, get_backbone


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


class _Asked(Exception):
    pass


@pytest.mark.parametrize("size", [96, 160, 224])
@pytest.mark.parametrize("name", [n for n in backbone_names() if BACKBONES[n].pretrainable])
def test_weight_file_is_the_one_keras_looks_for(name, size, monkeypatch):
    # The offline check and the "put this file there" message rely on this name being
    # the file keras.applications fetches into its cache for that size.
    from keras.src.utils import file_utils

    spec = get_backbone(name)
    asked = []

    def get_file(fname=None, *args, **kwargs):
        asked.append(fname)
        raise _Asked

    monkeypatch.setattr(file_utils, "get_file", get_file)
    size = max(size, spec.min_size)
    with pytest.raises(_Asked):
        spec.constructor(include_top=False, weights="imagenet", input_shape=(size, size, 3))
    keras.backend.clear_session()
    assert asked == [spec.weight_file(size)]
