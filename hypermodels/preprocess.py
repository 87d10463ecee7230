"""Preprocessing inside the model from built-in Keras layers only.

A model built with these loads with plain ``keras.saving.load_model(path,
safe_mode=True)``, without this project installed: the grayscale channel is
repeated three times (``Concatenate``) and one per-channel affine map
(``Rescaling`` with a scale and an offset per channel, which also casts uint8 to
float32) reproduces the backbone's own ``preprocess_input``.
"""

from __future__ import annotations

# Per-channel constants of keras.applications.imagenet_utils.preprocess_input.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
MODES = ("caffe", "tf", "torch", "raw", "unit")
LAYER_NAME = "preprocess"
INTENSITIES = ("as_stored", "standardize")
# A standardised film is put back at the mean and spread of a typical radiograph on 0..255,
# the range the backbone's ImageNet statistics expect.
_TYPICAL_MEAN, _TYPICAL_STD = 128.0, 64.0


def affine(mode: str) -> tuple[list[float], list[float]]:
    """Per-channel ``(scale, offset)`` with ``preprocess_input(x) == x * scale + offset``.

    Modes: ``caffe`` (BGR, ImageNet mean subtracted; the reversal of three equal
    grey channels changes nothing), ``tf`` ([-1, 1]), ``torch`` (ImageNet
    mean/std), ``raw`` (0..255, for EfficientNet which normalises inside) and
    ``unit`` ([0, 1], for models trained from scratch).
    """
    if mode == "caffe":
        return [1.0] * 3, [-m for m in _CAFFE_MEAN_BGR]
    if mode == "tf":
        return [1 / 127.5] * 3, [-1.0] * 3
    if mode == "torch":
        return [1 / (255.0 * s) for s in _TORCH_STD], [-m / s for m, s in zip(_TORCH_MEAN, _TORCH_STD)]
    if mode == "raw":
        return [1.0] * 3, [0.0] * 3
    if mode == "unit":
        return [1 / 255.0] * 3, [0.0] * 3
    raise ValueError(f"Unknown preprocess mode {mode!r}; expected one of {MODES}.")


def preprocess(images, mode: str, intensity: str = "as_stored"):
    """uint8 grayscale images ``(..., 1)`` -> float32 RGB in the backbone's input range.

    ``intensity="standardize"`` first gives each film zero mean and unit spread over its
    own pixels (a ``LayerNormalization`` over height, width and channel, no learned
    parameters), then the mean and spread of a typical film: how a source exposed and
    windowed its films stops mattering, and the exported model carries the step.
    """
    import keras  # here: the CLI reads INTENSITIES without loading Keras

    if intensity not in INTENSITIES:
        raise ValueError(f"Unknown intensity {intensity!r}; expected one of {INTENSITIES}.")
    if intensity == "standardize":
        floats = keras.layers.Rescaling(1.0, name="as_float")(images)
        unit = keras.layers.LayerNormalization(axis=(1, 2, 3), center=False, scale=False, epsilon=1e-3,
                                               dtype="float32", name="standardize")(floats)
        images = keras.layers.Rescaling(_TYPICAL_STD, _TYPICAL_MEAN, name="typical_film")(unit)
    scale, offset = affine(mode)
    rgb = keras.layers.Concatenate(name="grey_to_rgb")([images, images, images])
    return keras.layers.Rescaling(scale, offset, name=LAYER_NAME)(rgb)


def mode_of(model) -> str | None:
    """The preprocess mode inside ``model`` (built by :func:`preprocess`), or None.

    Also finds it inside a nested model, e.g. the frozen backbone an ensemble's members share.
    """
    import keras

    try:
        config = model.get_layer(LAYER_NAME).get_config()
    except ValueError:
        nested = (mode_of(layer) for layer in model.layers if isinstance(layer, keras.Model))
        return next((mode for mode in nested if mode), None)
    if "mode" in config:  # a model of an earlier version (hypermodels.layers.XrayPreprocess)
        return config["mode"]
    found = (_as_list(config["scale"]), _as_list(config["offset"]))
    matches = [m for m in MODES if all(abs(a - b) < 1e-6 for a, b in zip(sum(affine(m), []), sum(found, [])))]
    return matches[0] if matches else None


def _as_list(value) -> list[float]:
    if isinstance(value, dict):  # a serialized numpy array
        value = value.get("config", {}).get("value", value)
    values = list(value) if isinstance(value, (list, tuple)) else [value] * 3
    return [float(v) for v in values]
