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
