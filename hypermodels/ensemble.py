"""Keras graph code of the final model: members averaged in one model, a temperature on top.

Shared by the final stage (which builds it), evaluation (which reads its layers by
name) and delivery (which folds a single member's temperature into its last layer).
"""

from __future__ import annotations

import keras
import numpy as np

from cxr_tuner.hypermodels.cutting import cut_layer
from cxr_tuner.hypermodels.layers import FindingTemperature, TemperatureScaling
from cxr_tuner.hypermodels.backbones.spec import file_safe
from cxr_tuner.hypermodels.registry import Backbones

CALIBRATION_LAYER = "calibration"
ENSEMBLE_NAME = "cxr_ensemble"
ENSEMBLE_MEAN = "ensemble_mean"  # the layer averaging the members' probabilities, in member order


def _calibration(temperature):
    """The calibration layer: one softmax temperature, or a list of per-finding sigmoid temperatures."""
    if np.ndim(temperature):
        return FindingTemperature(temperature, name=CALIBRATION_LAYER)
    return TemperatureScaling(temperature, name=CALIBRATION_LAYER)


def build_ensemble(members: list[keras.Model], frozen: list[tuple[str, int | None]],
                   temperature=1.0, *, specs: Backbones) -> keras.Model:
    """One model averaging ``members``' probabilities, then ``TemperatureScaling(temperature)``.

    A list of temperatures (findings) calibrates each sigmoid output with its own.

    Args:
        members: Whole image models of the run (same uint8 input).
        frozen: Per member, ``(backbone, unfreeze depth)``; depth None when nothing of
            the backbone is frozen (trained from scratch), which then runs whole.
        temperature: Applied to the average; 1.0 leaves it as it is.
        specs: The run's backbones, which ``frozen`` names.
    """
    if len(members) == 1:  # stays flat, so Grad-CAM and the registry's layer names still apply
        member = members[0]
        return keras.Model(member.input, _calibration(temperature)(member.output), name=member.name)
    image = keras.Input(members[0].inputs[0].shape[1:], dtype=members[0].inputs[0].dtype, name="image")
    outputs, groups = [], {}
    for i, (member, (backbone, depth)) in enumerate(zip(members, frozen)):
        if depth is None:
            outputs.append(_renamed(member, f"member_{i + 1}")(image))
        else:
            groups.setdefault(backbone, []).append(i)
    for backbone, indices in groups.items():
        # The member that unfreezes most decides the deepest cut below which all are frozen alike.
        cut = cut_layer(specs.get(backbone), max(frozen[i][1] for i in indices))
        first = members[indices[0]]
        shared = keras.Model(first.input, first.get_layer(cut).output, name=f"frozen_{file_safe(backbone)}")
        shared.trainable = False
        features = shared(image)
        outputs += [_above(members[i], cut, f"member_{i + 1}")(features) for i in indices]
    mean = keras.layers.Average(name=ENSEMBLE_MEAN)(outputs)
    return keras.Model(image, _calibration(temperature)(mean), name=ENSEMBLE_NAME)


def for_export(model: keras.Model) -> keras.Model:
    """The final model as shipped: a single member's temperature folded into its softmax layer.

    ``softmax(z) -> softmax(z / T)`` is dividing the last Dense layer's kernel and bias
    by ``T``, so the shipped model holds built-in Keras layers only and loads without
    this project. An ensemble of several members keeps its ``TemperatureScaling``.
    """
    if CALIBRATION_LAYER not in [layer.name for layer in model.layers] or \
            "predictions" not in [layer.name for layer in model.layers]:
        return model
    calibration = model.get_layer(CALIBRATION_LAYER)
    # sigmoid(z) -> sigmoid(z / T_l) is the same division, column by column.
    temperature = np.asarray(getattr(calibration, "temperatures", None) or calibration.temperature)
    flat = keras.Model(model.input, model.get_layer("predictions").output, name=model.name)
    folded = keras.models.clone_model(flat)
    folded.set_weights(flat.get_weights())
    dense = folded.get_layer("predictions")
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel / temperature, bias / temperature])
    return folded


def _above(member: keras.Model, cut: str, name: str) -> keras.Model:
    """The part of ``member`` above layer ``cut``, as a model of its own holding the member's values."""
    blocks = keras.Model(member.get_layer(cut).output, member.output)
    inputs = keras.Input(blocks.inputs[0].shape[1:], name=f"{name}_{cut}")
    copy = keras.models.clone_model(blocks, input_tensors=inputs)
    for layer in copy.layers:
        if layer.weights:
            layer.set_weights(member.get_layer(layer.name).get_weights())
    return keras.Model(copy.input, copy.output, name=name)


def _renamed(member: keras.Model, name: str) -> keras.Model:
    return keras.Model(member.input, member.output, name=name)


def predict(model: keras.Model, images: np.ndarray, size: int = 64) -> np.ndarray:
    """Probabilities in batches, by direct calls (``Model.predict`` retraces per new model)."""
    return np.concatenate([keras.ops.convert_to_numpy(model(np.asarray(images[i:i + size]), training=False))
                           for i in range(0, len(images), size)]).astype(np.float64)
