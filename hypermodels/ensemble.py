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
    """The final model as shipped: built-in Keras layers only, so it loads without this project.

    One member: ``softmax(z) -> softmax(z / T)`` is dividing the last Dense layer's kernel
    and bias by ``T`` (column by column for sigmoid findings); the model stays flat for
    Grad-CAM. This is exact, and differs from the calibration layer only where that layer
    clips (a class probability under 1e-12, a finding's within 1e-7 of 0 or 1). Several members: the plain average when no temperature is applied, else
    the calibration layer rebuilt on the members' log-probabilities (:func:`_log_mean`,
    :func:`_calibrated`), the same function within float32 rounding.
    """
    names = [layer.name for layer in model.layers]
    if CALIBRATION_LAYER not in names:
        return model
    calibration = model.get_layer(CALIBRATION_LAYER)
    findings = isinstance(calibration, FindingTemperature)
    temperature = np.asarray(calibration.temperatures if findings else calibration.temperature, "float32")
    if ENSEMBLE_MEAN in names:
        if np.all(temperature == 1.0):  # not applied: left out
            return keras.Model(model.input, calibration.input, name=model.name)
        return keras.models.clone_model(model, clone_function=lambda layer: layer,
                                        call_function=_export_call(temperature, findings))
    flat = keras.Model(model.input, model.get_layer("predictions").output, name=model.name)
    folded = keras.models.clone_model(flat)
    folded.set_weights(flat.get_weights())
    dense = folded.get_layer("predictions")
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel / temperature, bias / temperature])
    return folded


def _export_call(temperature: np.ndarray, findings: bool):
    """``clone_model``'s call_function: members answer log-probabilities, the mean and calibration use them."""
    def call(layer, *args, **kwargs):
        if isinstance(layer, keras.Model) and "predictions" in [inner.name for inner in layer.layers]:
            head = layer.get_layer("predictions")
            body = keras.Model(layer.input, head.input, name=layer.name)
            return _log_terms(head, findings, layer.name)(body(*args, **kwargs))
        if layer.name == ENSEMBLE_MEAN:
            return _log_mean(args[0])
        if layer.name == CALIBRATION_LAYER:
            return _calibrated(args[0], temperature, findings)
        return layer(*args, **kwargs)
    return call


def _log_terms(head: keras.layers.Dense, findings: bool, name: str):
    """A member's answer as logs, (batch, K, 1) ``log p``, or for findings (batch, L, 2) ``log p, log(1 - p)``."""
    kernel, bias = head.get_weights()
    units = kernel.shape[1]

    def dense(sign, activation, suffix):
        layer = keras.layers.Dense(units, activation=activation, name=f"{name}_{suffix}", dtype="float32")
        layer.build((None, kernel.shape[0]))
        layer.set_weights([sign * kernel, sign * bias])
        return layer

    column = keras.layers.Reshape((units, 1), dtype="float32")
    if not findings:
        return lambda x: column(dense(1, "log_softmax", "log_probabilities")(x))
    present, absent = dense(1, "log_sigmoid", "log_present"), dense(-1, "log_sigmoid", "log_absent")
    return lambda x: keras.layers.Concatenate(dtype="float32")([column(present(x)), column(absent(x))])


def _log_mean(members: list) -> keras.KerasTensor:
    """``log(mean_i p_i)`` of the members' log terms, entry by entry: ``logsumexp_i(log p_i) - log M``.

    ``x - log_softmax(x)`` over the members' axis is their logsumexp in every column;
    pooling the columns keeps one.
    """
    units, kinds = members[0].shape[1:]
    stacked = keras.layers.Concatenate(dtype="float32")(
        [keras.layers.Reshape((units * kinds, 1), dtype="float32")(m) for m in members])
    spread = keras.layers.Subtract(dtype="float32")(
        [stacked, keras.layers.Activation("log_softmax", dtype="float32")(stacked)])
    pooled = keras.layers.GlobalAveragePooling1D(data_format="channels_first", dtype="float32")(spread)
    logs = keras.layers.Rescaling(1.0, offset=-float(np.log(len(members))), dtype="float32")(pooled)
    return keras.layers.Reshape((units, kinds), dtype="float32")(logs)


def _calibrated(logs, temperature: np.ndarray, findings: bool) -> keras.KerasTensor:
    """What the calibration layer computes, from log terms, in built-in layers (its clipping included).

    ``TemperatureScaling``: ``softmax(max(log p, log 1e-12) / T)``. ``FindingTemperature`` clips
    p to [1e-7, 1 - 1e-7] in float32, so ``log p >= log 1e-7`` and ``log(1 - p) >= log(1 - float32(1 -
    1e-7))``; then ``sigmoid((log p - log(1 - p)) / T_l)``.
    """
    def layer(kind, *args, **kwargs):
        return kind(*args, dtype="float32", **kwargs)

    units = logs.shape[1]
    if not findings:
        low = float(np.log(np.float32(1e-12)))
        x = layer(keras.layers.Reshape, (units,))(logs)
        x = layer(keras.layers.ReLU)(layer(keras.layers.Rescaling, 1.0, offset=-low)(x))
        x = layer(keras.layers.Rescaling, float(1 / temperature), offset=float(low / temperature))(x)
        return layer(keras.layers.Activation, "softmax", name="probabilities")(x)
    edge = np.float32(1e-7)
    low = [float(v) for v in np.log([edge, np.float32(1) - (np.float32(1) - edge)])]  # of log p, of log(1 - p)
    x = layer(keras.layers.ReLU)(layer(keras.layers.Rescaling, 1.0, offset=[-v for v in low])(logs))
    difference = layer(keras.layers.Dense, 1)  # (x_p + low_p) - (x_n + low_n)
    difference.build((None, units, 2))
    difference.set_weights([np.array([[1.0], [-1.0]], "float32"), np.array([low[0] - low[1]], "float32")])
    logits = layer(keras.layers.Reshape, (units,))(difference(x))
    x = layer(keras.layers.Rescaling, [float(1 / t) for t in temperature])(logits)
    return layer(keras.layers.Activation, "sigmoid", name="probabilities")(x)


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
