"""What the project knows of one backbone (`BackboneSpec`), and backbone names as names on disk."""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import keras

KERAS_PREFIX = "keras:"  # a backbone named keras:NAME is keras.applications.NAME (backbones.applications)


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """Everything the project needs to know about one backbone.

    Attributes:
        name: Registry name used on the command line.
        constructor: ``keras.applications``-style callable taking
            ``include_top``, ``weights`` and ``input_tensor``.
        preprocess: Mode of ``hypermodels.preprocess.preprocess`` that
            reproduces the backbone's own ``preprocess_input``.
        default_size: Input size the ImageNet weights were trained at.
        min_size: Smallest input size the architecture accepts.
        last_conv_layer: Layer whose activations Grad-CAM explains.
        unfreeze_points: Block outputs, from the top down; unfreeze depth ``d``
            trains every layer after ``unfreeze_points[d - 1]``. Cuts sit on
            single-tensor block boundaries so activations there can be cached.
        weight_file: Callable ``size -> file name`` of the no-top ImageNet
            weights in the Keras cache, or ``None`` (a from-scratch model, or one
            whose weights are its ``file``'s).
        file: The ``.keras`` file of a backbone of one's own (:func:`own_backbone`),
            which holds its architecture and its pretrained weights.
    """

    name: str
    constructor: Callable[..., "keras.Model"]
    preprocess: str
    default_size: int
    min_size: int
    last_conv_layer: str
    unfreeze_points: tuple[str, ...] = ()
    weight_file: Callable[[int], str] | None = None
    file: str | None = None

    @property
    def pretrainable(self) -> bool:
        """Whether pretrained weights exist for this backbone (ImageNet's, or its own file's)."""
        return self.weight_file is not None or self.file is not None


def file_safe(name: str) -> str:
    """``name`` as a file, folder, Keras model or layer name: ``keras:ConvNeXtTiny`` -> ``keras-ConvNeXtTiny``.

    The user-facing name keeps its ``:``; only where it becomes a name on disk or in a
    graph is it replaced (``:`` is not portable in file names, and the SavedModel export
    refuses it in a model name: "not a valid root scope name").
    """
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)

