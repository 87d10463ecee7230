"""The shipped final model: built-in Keras layers only, answering as the assembled one."""

import keras
import numpy as np
import pytest

from cxr_tuner.hypermodels.ensemble import build_ensemble, for_export
from cxr_tuner.hypermodels.layers import FindingTemperature, TemperatureScaling
from cxr_tuner.hypermodels.registry import BUILT_IN
from tests.conftest import plain_keras_outputs

SHAPES = [(task, members, temperature)
          for task, temperatures in (("softmax", (1.0, 1.7)), ("sigmoid", ([1.0] * 3, [1.0, 2.5, 0.6])))
          for members in (1, 2, 3) for temperature in temperatures]


def _member(seed: int, activation: str, confidence: float = 1.0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    image = keras.Input((16, 16, 1), dtype="uint8", name="image")
    x = keras.layers.Rescaling(1 / 64)(image)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(3, activation=activation, name="predictions")
    out = dense(x)
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel * confidence, bias])
    return keras.Model(image, out, name=f"member{seed}")


def test_every_export_shape_loads_in_plain_keras_and_answers_as_the_final_model(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 1)).astype("uint8")
    files, expected = [], {}
    for i, (task, members, temperature) in enumerate(SHAPES):
        # Several members: confident ones too (probabilities within 1e-7 of 0 or 1), where the
        # calibration layers clip. One member's temperature is folded into its Dense layer, exact
        # where the layer clips, so it is compared where the layer does not.
        confidence = 40.0 if members > 1 else 1.0
        final = build_ensemble([_member(seed, task, confidence) for seed in range(members)],
                               [("b", None)] * members, temperature, specs=BUILT_IN)
        shipped = for_export(final)
        custom = [layer for layer in shipped.layers if isinstance(layer, (TemperatureScaling, FindingTemperature))]
        assert not custom, (task, members, temperature)
        path = tmp_path / f"{i}.keras"
        shipped.save(path)
        files.append(path)
        expected[str(path)] = np.asarray(final(images))
    got = plain_keras_outputs(files, images, tmp_path)
    for path, shape in zip(files, SHAPES):
        np.testing.assert_allclose(got[str(path)]["output"], expected[str(path)], atol=1e-5, err_msg=str(shape))


@pytest.mark.parametrize("temperature", [1.0, [1.0, 1.0, 1.0]])
def test_an_ensemble_without_an_applied_temperature_ships_the_plain_average(temperature):
    activation = "softmax" if np.ndim(temperature) == 0 else "sigmoid"
    final = build_ensemble([_member(seed, activation) for seed in range(2)], [("b", None)] * 2, temperature,
                           specs=BUILT_IN)
    assert isinstance(for_export(final).layers[-1], keras.layers.Average)
