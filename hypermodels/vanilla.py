"""The small from-scratch ConvNet baseline of the tutorials, shaped like an application."""

from __future__ import annotations

import keras

_FILTERS = (16, 32, 64, 128, 128)


def VanillaCNN(include_top=False, weights=None, input_tensor=None, input_shape=None):  # noqa: N802
    """Builds five conv-BN-ReLU blocks with the ``keras.applications`` signature.

    Five blocks (four poolings), not the tutorials' three: chest findings are told
    apart partly by *where* they sit, and after global pooling a network only
    knows position if its receptive field spans the image (three blocks at 64 px
    left the demo's upper- vs lower-zone classes at chance).

    Args:
        include_top: Must be False; the HyperModel adds the classifier head.
        weights: Must be None: there are no pretrained weights for this model.
        input_tensor: Keras tensor to build on (the preprocessed image).
        input_shape: Shape used when ``input_tensor`` is None.

    Returns:
        A functional model from the source input to the last block's output.
    """
    if include_top or weights is not None:
        raise ValueError("VanillaCNN has no top and no pretrained weights.")
    inputs = input_tensor if input_tensor is not None else keras.Input(input_shape)
    x = inputs
    for i, filters in enumerate(_FILTERS, start=1):
        if i > 1:
            x = keras.layers.MaxPooling2D(name=f"block{i}_pool")(x)
        x = keras.layers.Conv2D(filters, 3, padding="same", name=f"block{i}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"block{i}_bn")(x)
        x = keras.layers.Activation("relu", name=f"block{i}_relu")(x)
    source = keras.utils.get_source_inputs(inputs) if input_tensor is not None else inputs
    return keras.Model(source, x, name="vanilla_cnn")
