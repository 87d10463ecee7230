"""``keras:NAME``: any ``keras.applications`` model, described from the model itself on first use.

Its Grad-CAM layer and cut points come from its graph (`hypermodels.discovery`), its
preprocessing is found numerically, and its sizes and weight file are asked of Keras
(`hypermodels.compat.keras_compat`). A description is a pure function of the name, so
it is built once per process.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import sys
from typing import Callable

import keras
import numpy as np

from cxr_tuner.data.errors import UserError
from cxr_tuner.hypermodels import discovery
from cxr_tuner.hypermodels.backbones.spec import KERAS_PREFIX, BackboneSpec
from cxr_tuner.hypermodels.compat import keras_compat
from cxr_tuner.hypermodels.preprocess import MODES, affine

"""``keras:NAME`` names the ``keras.applications`` model ``NAME`` (e.g. ``keras:ConvNeXtTiny``)."""

_SIZE_TABLE = {"mobilenet_v3": (224, 32)}
"""``(default_size, min_size)`` of the families that check their input size without
``imagenet_utils.obtain_input_shape`` (MobileNetV3: 224, at least 32x32)."""


def keras_application_names() -> list[str]:
    """The model names of ``keras.applications`` (``ConvNeXtTiny``, ``ResNet50``, ...), sorted."""
    return sorted(n for n in dir(keras.applications)
                  if n[:1].isupper() and callable(getattr(keras.applications, n)))


def preprocess_mode_of(application: Callable) -> str:
    """The mode of ``hypermodels.preprocess`` that reproduces the application's own ``preprocess_input``.

    Found numerically on grey images (three equal channels, as ours are), so a family
    that normalises inside the model (ConvNeXt, EfficientNet, RegNet, MobileNetV3:
    ``preprocess_input`` is the identity) comes out as ``raw``.
    """
    preprocess_input = sys.modules[application.__module__].preprocess_input
    grey = np.repeat(np.linspace(0, 255, 16, dtype="float32").reshape(1, 4, 4, 1), 3, axis=-1)
    expected = np.asarray(preprocess_input(grey.copy()), "float32")
    for mode in MODES:
        scale, offset = affine(mode)
        if np.allclose(grey * np.float32(scale) + np.float32(offset), expected, atol=1e-4):
            return mode
    raise ValueError(f"No preprocess mode reproduces {application.__module__}.preprocess_input.")


def _sizes(application: Callable) -> tuple[int, int]:
    """``(default_size, min_size)``: what the application passes to its own input-shape check."""
    family = application.__module__.rsplit(".", 1)[-1]
    if family in _SIZE_TABLE:
        return _SIZE_TABLE[family]
    return keras_compat.input_size_bounds(application) or (224, 32)


class _KerasWeightFile:
    """``size -> file name`` that the application fetches into the Keras cache for that input size.

    Asked of Keras itself (`keras_compat.fetched_file_name`: a dry construction that
    stops at ``get_file``). Cached per size (the construction builds the model).
    """

    def __init__(self, application: Callable):
        self.application = application
        self._names: dict[int, str] = {}

    def __call__(self, size: int) -> str:
        if size not in self._names:
            build = functools.partial(self.application, include_top=False, weights="imagenet",
                                      input_shape=(size, size, 3))
            try:
                fetched = keras_compat.fetched_file_name(build)
            except ValueError as error:  # the application refuses this size with ImageNet weights
                raise UserError(f"keras:{self.application.__name__} has no ImageNet weights at {size} px "
                                f"({' '.join(str(error).split())[:200]}); pick another --image-size or "
                                "--weights none.") from None
            if fetched is None:
                raise ValueError(f"{self.application.__name__} fetched no weight file.")
            self._names[size] = fetched
        return self._names[size]


@functools.cache
def keras_backbone(app: str) -> BackboneSpec:
    """The spec of ``keras.applications.<app>``, described from the model (built once, without weights)."""
    if app not in keras_application_names():
        close = difflib.get_close_matches(app, keras_application_names(), n=1)
        hint = f" (did you mean keras:{close[0]}?)" if close else ""
        raise UserError(f"Unknown backbone {KERAS_PREFIX}{app}: keras.applications has no model {app!r}{hint}; "
                        "`cxr-tuner backbones --keras` lists the valid keras:NAME backbones.")
    application = getattr(keras.applications, app)
    default_size, min_size = _sizes(application)
    size = max(min_size, 32)
    found = discovery.describe(application(include_top=False, weights=None, input_shape=(size, size, 3)))
    return BackboneSpec(KERAS_PREFIX + app, KerasApplication(app, found.renames), preprocess_mode_of(application),
                        default_size, min_size, found.last_conv_layer, found.cuts, _KerasWeightFile(application))


@dataclasses.dataclass(frozen=True)
class KerasApplication:
    """The constructor of ``keras:NAME``: ``keras.applications.NAME``, with its unnamed cut points named.

    Without ``renames`` it is the application itself. With them (ConvNeXt, Xception:
    blocks that end in a Keras op or a Keras-named layer) the application is built
    standalone and rebuilt flat on ``input_tensor`` with a named ``Identity`` after each
    of those (``hypermodels.discovery.with_named_outputs``), holding the same values.
    """

    name: str
    renames: tuple = ()

    def __call__(self, include_top=False, weights=None, input_tensor=None, input_shape=None, **kwargs):
        application = getattr(keras.applications, self.name)
        if not self.renames:
            return application(include_top=include_top, weights=weights, input_tensor=input_tensor,
                               input_shape=input_shape, **kwargs)
        shape = input_shape or tuple(input_tensor.shape[1:])
        model = application(include_top=include_top, weights=weights, input_shape=shape, **kwargs)
        return discovery.with_named_outputs(model, dict(self.renames), input_tensor)

