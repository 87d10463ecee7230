"""The one backbone registry: a name maps to one frozen spec.

Adding a backbone is one entry in ``BACKBONES``; the tests are parametrized over
the registry, so a new entry is tested the moment it is added.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import keras

from data.errors import UserError
from hypermodels import vanilla


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
            weights in the Keras cache, or ``None`` for a from-scratch model.
    """

    name: str
    constructor: Callable[..., keras.Model]
    preprocess: str
    default_size: int
    min_size: int
    last_conv_layer: str
    unfreeze_points: tuple[str, ...] = ()
    weight_file: Callable[[int], str] | None = None

    @property
    def pretrainable(self) -> bool:
        """Whether ImageNet weights exist for this backbone."""
        return self.weight_file is not None


def _fixed(file_name: str) -> Callable[[int], str]:
    return lambda size: file_name


def _mobilenet_rows(size: int, allowed: tuple[int, ...]) -> int:
    # Keras picks the 224 weights for any size it has no weights for.
    return size if size in allowed else 224


def _mobilenet_file(alpha_text: str) -> Callable[[int], str]:
    def name(size: int) -> str:
        rows = _mobilenet_rows(size, (128, 160, 192, 224))
        return f"mobilenet_{alpha_text}_{rows}_tf_no_top.h5"

    return name


def _mobilenet_v2_file(size: int) -> str:
    rows = _mobilenet_rows(size, (96, 128, 160, 192, 224))
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5"


_apps = keras.applications
BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            "resnet50", _apps.ResNet50, "caffe", 224, 32, "conv5_block3_out",
            ("conv5_block2_out", "conv5_block1_out", "conv4_block6_out"),
            _fixed("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        ),
        BackboneSpec(
            "inception_v3", _apps.InceptionV3, "tf", 299, 75, "mixed10",
            ("mixed9", "mixed8", "mixed7"),
            _fixed("inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        ),
        BackboneSpec(
            "densenet121", _apps.DenseNet121, "torch", 224, 32, "relu",
            ("conv5_block15_concat", "conv5_block12_concat", "pool4_pool"),
            _fixed("densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        ),
        BackboneSpec(
            "efficientnet_b0", _apps.EfficientNetB0, "raw", 224, 32, "top_activation",
            ("block6d_add", "block5c_add", "block4c_add"),
            _fixed("efficientnetb0_notop.h5"),
        ),
        BackboneSpec(
            "mobilenet_v2", _apps.MobileNetV2, "tf", 224, 32, "out_relu",
            ("block_15_add", "block_14_add", "block_12_add"),
            _mobilenet_v2_file,
        ),
        BackboneSpec(
            "mobilenet", _apps.MobileNet, "tf", 224, 32, "conv_pw_13_relu",
            ("conv_pw_12_relu", "conv_pw_11_relu", "conv_pw_10_relu"),
            _mobilenet_file("1_0"),
        ),
        BackboneSpec(
            "mobilenet_025", functools.partial(_apps.MobileNet, alpha=0.25),
            "tf", 224, 32, "conv_pw_13_relu",
            ("conv_pw_12_relu", "conv_pw_11_relu", "conv_pw_10_relu"),
            _mobilenet_file("2_5"),
        ),
        BackboneSpec(
            "vanilla_cnn", vanilla.VanillaCNN, "unit", 128, 16, vanilla.LAST_CONV_LAYER,
        ),
    )
}


def get_backbone(name: str) -> BackboneSpec:
    """Returns the spec registered under ``name``.

    Raises:
        UserError: If no backbone has that name; the message lists the known ones.
    """
    try:
        return BACKBONES[name]
    except KeyError:
        known = ", ".join(BACKBONES)
        raise UserError(
            f"Unknown backbone {name!r}. Known backbones: {known} "
            "(`cxr-tuner backbones` lists them with their sizes)."
        ) from None


def backbone_names() -> list[str]:
    """Names of every registered backbone, in registry order."""
    return list(BACKBONES)
