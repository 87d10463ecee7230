"""The HyperModel that defines what a search explores."""

from __future__ import annotations

from typing import Sequence

import keras
import keras_tuner

from hypermodels.layers import XrayPreprocess
from hypermodels.registry import BackboneSpec, get_backbone
from hypermodels.weights import resolve_weights

OBJECTIVE = "val_weighted_loss"
"""Name of the class-weighted validation loss that ranks trials."""

MAX_HEAD_DEPTH = 3
HEAD_UNITS = (64, 128, 256, 512)


class XrayClassifier(keras_tuner.HyperModel):
    """Transfer-learning classifier for uint8 chest X-rays of one fixed size.

    Hyperparameters: ``backbone`` (a choice over ``backbones``), ``head_depth`` and
    ``head_units_{i}``, ``dropout``, ``learning_rate`` (log scale) and, for
    pretrained backbones, ``unfreeze_depth``: how many top blocks of the backbone
    train (0 = frozen). Backbones trained from scratch train whole, so they have
    no ``unfreeze_depth``.

    Args:
        num_classes: Number of output classes.
        image_size: Side of the square grayscale input, in pixels.
        backbones: Registry names the search chooses from.
        weights: ``"imagenet"``, ``"none"`` or a weights-file path.
    """

    def __init__(self, num_classes: int, image_size: int,
                 backbones: Sequence[str] = ("mobilenet_025",), weights: str = "imagenet",
                 **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.image_size = image_size
        self.backbones = tuple(backbones)
        self.weights = weights

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        name = hp.Choice("backbone", list(self.backbones), default=self.backbones[0])
        spec = get_backbone(name)
        inputs = keras.Input((self.image_size, self.image_size, 1), dtype="uint8", name="image")
        x = XrayPreprocess(spec.preprocess, name="preprocess")(inputs)
        weights = resolve_weights(spec, self.weights, self.image_size)
        base = spec.constructor(include_top=False, weights=weights, input_tensor=x)
        if weights is not None:
            self._freeze(base, spec, hp)
        else:
            _follow_batch_statistics_faster(base)
        outputs = self._head(base.output, hp)
        model = keras.Model(inputs, outputs, name=f"cxr_{name}")
        compile_model(model, hp.Float("learning_rate", 1e-4, 1e-2, sampling="log", default=1e-3))
        return model

    def _pretrained(self) -> list[str]:
        if self.weights == "none":
            return []
        return [n for n in self.backbones if get_backbone(n).pretrainable]

    def _freeze(self, base: keras.Model, spec: BackboneSpec, hp) -> None:
        with hp.conditional_scope("backbone", self._pretrained()):
            depth = hp.Int("unfreeze_depth", 0, len(spec.unfreeze_points), default=0)
        freeze_backbone(base, spec, depth)

    def _head(self, features, hp):
        x = keras.layers.GlobalAveragePooling2D(name="head_pool")(features)
        depth = hp.Int("head_depth", 0, MAX_HEAD_DEPTH, default=1)
        dropout = hp.Float("dropout", 0.0, 0.5, step=0.1, default=0.2)
        for i in range(depth):
            with hp.conditional_scope("head_depth", list(range(i + 1, MAX_HEAD_DEPTH + 1))):
                units = hp.Choice(f"head_units_{i}", list(HEAD_UNITS), default=128)
            x = keras.layers.Dense(units, activation="relu", name=f"head_dense_{i}")(x)
            x = keras.layers.Dropout(dropout, name=f"head_dropout_{i}")(x)
        if depth == 0:
            x = keras.layers.Dropout(dropout, name="head_dropout")(x)
        return keras.layers.Dense(self.num_classes, activation="softmax", name="predictions")(x)


def freeze_backbone(base: keras.Model, spec: BackboneSpec, depth: int) -> None:
    """Freezes ``base`` except the top ``depth`` blocks; BatchNorm always stays frozen.

    A frozen BatchNorm layer runs in inference mode in Keras 3, so unfreezing
    convolutions never disturbs the ImageNet statistics (and the frozen part's
    activations stay a pure function of the image, which caching relies on).
    """
    cut = base.get_layer(spec.unfreeze_points[depth - 1]) if depth else None
    trainable = False
    for layer in base.layers:
        layer.trainable = trainable and not isinstance(layer, keras.layers.BatchNormalization)
        if layer is cut:
            trainable = True


def _follow_batch_statistics_faster(base: keras.Model) -> None:
    """Lowers BatchNorm momentum for models trained from scratch.

    With Keras' default 0.99 and the few hundred steps of a small search, the
    moving statistics still sit near their initial values when validation runs,
    so validation sees a different network than training did (accuracy at chance
    while training accuracy climbs). 0.9 tracks them within a few dozen steps.
    """
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9


def compile_model(model: keras.Model, learning_rate: float) -> None:
    """Compiles with the class-weighted loss the search ranks on.

    The data carry per-sample class weights, so ``weighted_loss`` is the
    class-weighted cross-entropy (sum of w*l over sum of w), on validation
    ``val_weighted_loss``: the objective. Keras' own ``val_loss`` divides by the
    sample count instead and mixes in regularisation, so it is not used to rank.
    """
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.CategoricalCrossentropy(),
        metrics=["accuracy"],
        weighted_metrics=[keras.metrics.CategoricalCrossentropy(name="weighted_loss")],
    )
