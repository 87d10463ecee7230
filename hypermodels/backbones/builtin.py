"""The hand-described backbones: one entry per name in one table (the tests are parametrized over it).

The table imports no Keras: `cxr-tuner backbones` prints it without loading TensorFlow; each
constructor imports Keras when it builds.
"""

from __future__ import annotations

from typing import Callable

from cxr_tuner.hypermodels.backbones.spec import BackboneSpec

VANILLA_LAST_CONV_LAYER = "block5_relu"  # Grad-CAM's layer in the from-scratch ConvNet: its last block's activation


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


def _application(name: str, **fixed) -> Callable:
    """``keras.applications.<name>`` with ``fixed`` arguments, looked up when it builds."""
    def build(**kwargs):
        import keras  # here: the table is read without TensorFlow (cxr-tuner backbones)

        return getattr(keras.applications, name)(**fixed, **kwargs)

    build.__name__ = build.__qualname__ = name
    return build


def _vanilla(**kwargs):
    from cxr_tuner.hypermodels import vanilla  # here: it imports Keras

    return vanilla.VanillaCNN(**kwargs)


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            "resnet50", _application("ResNet50"), "caffe", 224, 32, "conv5_block3_out",
            ("conv5_block2_out", "conv5_block1_out", "conv4_block6_out"),
            _fixed("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        ),
        BackboneSpec(
            "inception_v3", _application("InceptionV3"), "tf", 299, 75, "mixed10",
            ("mixed9", "mixed8", "mixed7"),
            _fixed("inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        ),
        BackboneSpec(
            "densenet121", _application("DenseNet121"), "torch", 224, 32, "relu",
            ("conv5_block15_concat", "conv5_block12_concat", "pool4_pool"),
            _fixed("densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        ),
        BackboneSpec(
            "efficientnet_b0", _application("EfficientNetB0"), "raw", 224, 32, "top_activation",
            ("block6d_add", "block5c_add", "block4c_add"),
            _fixed("efficientnetb0_notop.h5"),
        ),
        BackboneSpec(
            "mobilenet_v2", _application("MobileNetV2"), "tf", 224, 32, "out_relu",
            ("block_15_add", "block_14_add", "block_12_add"),
            _mobilenet_v2_file,
        ),
        BackboneSpec(
            "mobilenet", _application("MobileNet"), "tf", 224, 32, "conv_pw_13_relu",
            ("conv_pw_12_relu", "conv_pw_11_relu", "conv_pw_10_relu"),
            _mobilenet_file("1_0"),
        ),
        BackboneSpec(
            "mobilenet_025", _application("MobileNet", alpha=0.25),
            "tf", 224, 32, "conv_pw_13_relu",
            ("conv_pw_12_relu", "conv_pw_11_relu", "conv_pw_10_relu"),
            _mobilenet_file("2_5"),
        ),
        BackboneSpec(
            "vanilla_cnn", _vanilla, "unit", 128, 16, VANILLA_LAST_CONV_LAYER,
        ),
    )
}
