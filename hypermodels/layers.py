"""The registered preprocessing layer of earlier versions, kept so their files still load.

Models built now use built-in layers (:mod:`hypermodels.preprocess`) and load
without this module; ``.keras`` files written before need it imported (the
``predict`` command does).
"""

from __future__ import annotations

import keras
from keras import ops

# Per-channel constants of keras.applications.imagenet_utils.preprocess_input.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
MODES = ("caffe", "tf", "torch", "raw", "unit")


@keras.saving.register_keras_serializable(package="cxr")
class XrayPreprocess(keras.layers.Layer):
    """uint8 grayscale or RGB image -> float32 RGB in the backbone's input range.

    Modes reproduce ``keras.applications.*.preprocess_input``: ``caffe`` (BGR,
    ImageNet mean subtracted), ``tf`` ([-1, 1]), ``torch`` (ImageNet mean/std),
    ``raw`` (0..255, for EfficientNet which normalises inside), and ``unit``
    ([0, 1], for models trained from scratch).
    """

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"Unknown preprocess mode {mode!r}; expected one of {MODES}.")
        self.mode = mode

    def call(self, images):
        x = ops.cast(images, "float32")
        if x.shape[-1] == 1:
            x = ops.concatenate([x, x, x], axis=-1)
        if self.mode == "caffe":
            return x[..., ::-1] - ops.convert_to_tensor(_CAFFE_MEAN_BGR)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_TORCH_MEAN)
            return (x / 255.0 - mean) / ops.convert_to_tensor(_TORCH_STD)
        if self.mode == "unit":
            return x / 255.0
        return x

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="cxr")
class TemperatureScaling(keras.layers.Layer):
    """Probabilities -> temperature-scaled probabilities, ``softmax(log(p) / T)``.

    Applied to a softmax output this equals dividing its logits by ``T`` (log p
    differs from the logits by a constant per row), so a trained model, or an
    average of several, is calibrated without touching its other layers.
    ``T > 1`` softens over-confident answers; the ranking of classes never changes.
    """

    def __init__(self, temperature: float, **kwargs):
        super().__init__(**kwargs)
        self.temperature = float(temperature)

    def call(self, probabilities):
        logits = ops.log(ops.clip(ops.cast(probabilities, "float32"), 1e-12, 1.0))
        return ops.softmax(logits / self.temperature, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


@keras.saving.register_keras_serializable(package="cxr")
class FindingTemperature(keras.layers.Layer):
    """Sigmoid probabilities -> ``sigmoid(logit(p) / T)``, one temperature per finding.

    Each finding's output is its own binary answer, so each has its own temperature
    (1.0 leaves a finding as it is); the order of films within a finding never changes.
    """

    def __init__(self, temperatures, **kwargs):
        super().__init__(**kwargs)
        self.temperatures = [float(t) for t in temperatures]

    def call(self, probabilities):
        p = ops.clip(ops.cast(probabilities, "float32"), 1e-7, 1.0 - 1e-7)
        logits = ops.log(p) - ops.log(1.0 - p)
        return ops.sigmoid(logits / ops.convert_to_tensor(self.temperatures))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "temperatures": self.temperatures}
