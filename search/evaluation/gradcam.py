"""Grad-CAM: where in the X-ray a model looked for its answer.

Our models are flat functional graphs (the backbone is built on the model's own
input tensor), so the target layer's activations and the class scores come out
of one model and there is no "Graph disconnected". A model that nests its
backbone as a sub-model is rebuilt as a chain around a two-output backbone.
"""

from __future__ import annotations

from pathlib import Path

import keras
import matplotlib
import numpy as np
import tensorflow as tf
from matplotlib.figure import Figure
from PIL import Image

from cxr_tuner.data.errors import UserError
from cxr_tuner.hypermodels.registry import Backbones

ALPHA = 0.45  # share of the colour map in an overlay


def default_layer(model: keras.Model, specs: Backbones) -> str:
    """The Grad-CAM layer of our models' backbone (named ``cxr_<backbone>``; one of ``specs``), else the last 4-D layer."""
    backbone = specs.of_model(model.name)
    if backbone is not None:
        return specs.get(backbone).last_conv_layer
    spatial = [layer.name for layer in model.layers[1:] if len(layer.output.shape) == 4]
    if not spatial:
        raise UserError(f"Model {model.name} has no layer with a spatial (4-D) output to explain; pass --layer.")
    return spatial[-1]


def gradcam_model(model: keras.Model, layer_name: str) -> keras.Model:
    """A model mapping the input to ``[layer activations, class scores]``.

    The class scores are the logits before the softmax (or a finding's sigmoid) when
    the model ends in such a ``Dense`` (as the Grad-CAM paper prescribes: a saturated
    output has vanishing gradients), else the model's outputs. A backbone nested as a
    sub-model one level deep is handled by replaying the model as a chain.

    Raises:
        UserError: If neither the model nor a sub-model has a layer of that name,
            or a nested model is not a chain of layers.
    """
    head = model.layers[-1]
    try:
        target = model.get_layer(layer_name).output
        inputs, head_input, output = model.inputs, head.input, model.output
    except ValueError:
        inputs, target, head_input, output = _replayed_chain(model, layer_name)
    return keras.Model(inputs, [target, _scores(head, head_input, output)])


def _scores(head, head_input, output):
    if isinstance(head, keras.layers.Dense) and head.activation in (keras.activations.softmax,
                                                                     keras.activations.sigmoid):
        logits = keras.layers.Dense(head.units, name="gradcam_logits")
        tensor = logits(head_input)
        logits.set_weights(head.get_weights())  # a weightless copy of the head, without softmax
        return tensor
    return output


def _replayed_chain(model: keras.Model, layer_name: str):
    """Replays ``model`` layer by layer, the sub-model holding ``layer_name`` giving two outputs."""
    nested = [sub for sub in model.layers if isinstance(sub, keras.Model)
              and any(layer.name == layer_name for layer in sub.layers)]
    if not nested:
        names = ", ".join(layer.name for layer in model.layers[-6:])
        raise UserError(f"Model {model.name} has no layer {layer_name!r} (its last layers: {names}); "
                        "pass --layer with the name of a convolutional layer.")
    sub = nested[0]
    two_outputs = keras.Model(sub.inputs, [sub.get_layer(layer_name).output, sub.output])
    inputs = keras.Input(model.inputs[0].shape[1:], dtype=model.inputs[0].dtype)
    x = target = head_input = inputs
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        head_input = x
        if layer is sub:
            target, x = two_outputs(x)
        else:
            x = layer(x)
    _check_same_predictions(model, keras.Model(inputs, x))
    return inputs, target, head_input, x


def _check_same_predictions(model, replayed):
    """A replay is only right if the original was a chain: compare both on random input."""
    shape = (2, *model.inputs[0].shape[1:])
    probe = np.random.default_rng(0).integers(0, 256, shape).astype(model.inputs[0].dtype)
    expected = keras.ops.convert_to_numpy(model(probe, training=False))
    got = keras.ops.convert_to_numpy(replayed(probe, training=False))
    if not np.allclose(expected, got, atol=1e-5):
        raise UserError(f"Model {model.name} nests its backbone in a graph that is not a chain of layers, "
                        "so Grad-CAM cannot rebuild it; build the backbone with input_tensor= on the "
                        "model's input, or pass --layer with a layer of the outer model.")


def heatmaps(explainer: keras.Model, images: np.ndarray, class_index=None) -> np.ndarray:
    """Grad-CAM heatmaps in [0, 1] at the target layer's resolution, shape (N, h, w).

    Args:
        explainer: A model from `gradcam_model`.
        images: Model inputs (uint8, (N, S, S, 1)).
        class_index: Class to explain: an int for all images, an (N,) array, or
            ``None`` for each image's predicted class.
    """
    return _peak_normalised(_cams(explainer, tf.convert_to_tensor(images), _chosen(class_index, len(images))).numpy())


def all_heatmaps(explainer, images: np.ndarray, class_index=None, batch: int = 32) -> np.ndarray:
    """`heatmaps` of many images, ``batch`` at a time (``class_index``: None, an int or an (N,) array).

    ``explainer``: a model from `gradcam_model`, or its `Traced` to reuse one trace across calls.
    """
    cams = explainer if isinstance(explainer, Traced) else Traced(explainer)
    chosen = _chosen(class_index, len(images))
    return np.concatenate([cams(images[start:start + batch], chosen[start:start + batch])
                           for start in range(0, len(images), batch)])


class Traced:
    """`heatmaps` of one explainer as one traced TensorFlow function, traced once for every batch: eager,
    the tape dispatches the whole backbone op by op, several times slower (docs/performance.md)."""

    def __init__(self, explainer: keras.Model):
        source = explainer.inputs[0]
        signature = [tf.TensorSpec((None, *source.shape[1:]), source.dtype), tf.TensorSpec((None,), tf.int64)]
        self._cams = tf.function(lambda images, chosen: _cams(explainer, images, chosen), input_signature=signature)

    def __call__(self, images: np.ndarray, chosen: np.ndarray) -> np.ndarray:
        """Heatmaps of ``images``, each explaining class ``chosen[i]`` (-1: its predicted class)."""
        return _peak_normalised(self._cams(tf.convert_to_tensor(images), tf.constant(chosen, tf.int64)).numpy())


def _chosen(class_index, count: int) -> np.ndarray:
    """Per image the class to explain, -1 for its predicted one."""
    if class_index is None:
        return np.full(count, -1, np.int64)
    return np.broadcast_to(np.asarray(class_index, np.int64), (count,))


def _cams(explainer: keras.Model, x, chosen):
    """Unnormalised Grad-CAM maps of a batch; ``chosen`` (N,) int64, -1 for each image's predicted class."""
    with tf.GradientTape() as tape:
        activations, scores = explainer(x, training=False)
        chosen = tf.where(chosen < 0, tf.argmax(scores, axis=1), chosen)
        # Images are independent in inference mode, so the gradient of the sum
        # is each image's own gradient.
        target = tf.reduce_sum(tf.gather(scores, chosen, axis=1, batch_dims=1))
    grads = tape.gradient(target, activations)
    channel_weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    return tf.nn.relu(tf.reduce_sum(activations * channel_weights, axis=-1))


def _peak_normalised(cams: np.ndarray) -> np.ndarray:
    peaks = cams.reshape(len(cams), -1).max(axis=1)[:, None, None]
    return np.divide(cams, peaks, out=np.zeros_like(cams), where=peaks > 0)


def upsample(heatmap: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of one (h, w) heatmap to (size, size)."""
    return tf.image.resize(heatmap[..., None], (size, size), method="bilinear").numpy()[..., 0]


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """The heatmap (jet colour map) over the grayscale X-ray: uint8 RGB (S, S, 3)."""
    grey = np.repeat(np.asarray(image, np.float32).reshape(image.shape[0], image.shape[1], 1), 3, axis=-1)
    colours = matplotlib.colormaps["jet"](upsample(heatmap, image.shape[0]))[..., :3] * 255.0
    return np.clip((1 - alpha) * grey + alpha * colours, 0, 255).astype(np.uint8)


def save_overlay(image: np.ndarray, heatmap: np.ndarray, path) -> Path:
    """Writes the overlay of one image as PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay(image, heatmap)).save(path)
    return path


def grid_figure(count: int, heading: str) -> tuple[Figure, np.ndarray]:
    """A figure of ``count`` image panels, 4 a row, each with a two-line title, and the panels' axes.

    Spaced by hand in inches: a constrained layout solves the same spacing at
    every save and took a third of each gallery's time.
    """
    columns = min(4, count)
    rows = -(-count // columns)
    height = 2.7 * rows + 0.4
    figure = Figure(figsize=(2.4 * columns, height))
    figure.suptitle(heading, y=1 - 0.1 / height, va="top")
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.1 / height, top=1 - 0.75 / height,
                           wspace=0.05, hspace=0.55 / 2.2)
    return figure, figure.subplots(rows, columns, squeeze=False).ravel()
