"""The HyperModel that defines what a search explores."""

from __future__ import annotations

import random
from typing import Sequence

import keras
import keras_tuner
import numpy as np

from cxr_tuner.hypermodels import precision as precisions
from cxr_tuner.hypermodels.findings import Findings, compile_findings
from cxr_tuner.hypermodels.preprocess import preprocess
from cxr_tuner.hypermodels.backbones.spec import BackboneSpec, file_safe
from cxr_tuner.hypermodels.registry import BUILT_IN, Backbones
from cxr_tuner.hypermodels.space import DEFAULT_ENTRIES, Space
from cxr_tuner.hypermodels.weights import resolve_weights

OBJECTIVE = "val_weighted_loss"
"""Name of the class-weighted validation loss that ranks trials."""
OBJECTIVE_MULTILABEL = "val_weighted_bce"
"""Its multi-label counterpart: the class-weighted binary cross-entropy (`hypermodels.findings`)."""

MAX_HEAD_DEPTH = int(DEFAULT_ENTRIES["head_depth"].max)
POOLED = "head_pool"
"""Layer whose output (the backbone's globally pooled features) feeds the head."""
HEAD_UNITS = DEFAULT_ENTRIES["head_units"].values


class XrayClassifier(keras_tuner.HyperModel):
    """Transfer-learning classifier for uint8 chest X-rays of one fixed size.

    Hyperparameters: ``backbone`` (a choice over ``backbones``), ``head_depth`` and
    ``head_units_{i}``, ``dropout``, ``learning_rate`` (log scale) and, for
    pretrained backbones, ``unfreeze_depth``: how many top blocks of the backbone
    train (0 = frozen). Backbones trained from scratch train whole, so they have
    no ``unfreeze_depth``. ``space`` gives each one's domain (`hypermodels.space`).

    Args:
        num_classes: Number of output classes.
        image_size: Side of the square grayscale input, in pixels.
        backbones: Backbone names the search chooses from.
        weights: ``"imagenet"``, ``"none"`` or a weights-file path.
        precision: The Keras dtype policy its layers compute in (`hypermodels.precision`).
        space: The domains of the other hyperparameters; None: the default space.
        findings: For a multi-label run, the findings and their loss weights: the head ends
            in one sigmoid per finding and trains on the weighted bce. None: softmax classes.
        specs: The run's backbones, which ``backbones`` name (`RunConfig.backbone_specs`);
            None: the built-ins and ``keras:NAME``.
        intensity: ``"as_stored"`` or ``"standardize"`` (each film to a typical mean and
            spread inside the model, `hypermodels.preprocess`).
    """

    def __init__(self, num_classes: int, image_size: int,
                 backbones: Sequence[str] = ("mobilenet_025",), weights: str = "imagenet",
                 precision: str = "float32", space: Space | None = None, findings: Findings | None = None,
                 specs: Backbones | None = None, intensity: str = "as_stored", **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.image_size = image_size
        self.backbones = tuple(backbones)
        self.weights = weights
        self.precision = precision
        self.space = space or Space()
        self.findings = findings
        self.specs = specs or BUILT_IN
        self.intensity = intensity

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        with precisions.policy(self.precision):
            return self._build_in_policy(hp)

    def _build_in_policy(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        spec = self.specs.get(self.backbone(hp))
        weights = resolve_weights(spec, self.weights, self.image_size)
        depth = self.unfreeze_depth(hp, spec) if weights is not None else None
        seed = head_seed()
        inputs = keras.Input((self.image_size, self.image_size, 1), dtype="uint8", name="image")
        x = preprocess(inputs, spec.preprocess, self.intensity)
        base = spec.constructor(include_top=False, weights=weights, input_tensor=x)
        if depth is None:
            _follow_batch_statistics_faster(base)
        else:
            freeze_backbone(base, spec, depth)
        outputs = self.head(base.output, hp, seed)
        model = keras.Model(inputs, outputs, name=f"cxr_{file_safe(spec.name)}")
        self.compile(model, self.learning_rate(hp))
        return model

    def compile(self, model: keras.Model, learning_rate: float, steps_per_execution: int = 1) -> None:
        """Compiles with the loss the run ranks on (class-weighted cross-entropy, or weighted bce for findings)."""
        if self.findings is None:
            compile_model(model, learning_rate, steps_per_execution)
        else:
            compile_findings(model, learning_rate, self.findings, steps_per_execution)

    def backbone(self, hp: keras_tuner.HyperParameters) -> str:
        """Declares (or reads) the ``backbone`` choice; returns its value."""
        return hp.Choice("backbone", list(self.backbones), default=self.backbones[0])

    def unfreeze_depth(self, hp: keras_tuner.HyperParameters, spec: BackboneSpec) -> int:
        """Declares (or reads) ``unfreeze_depth``, which only pretrained backbones have."""
        with hp.conditional_scope("backbone", self._pretrained()):
            return self.space.unfreeze_entry(len(spec.unfreeze_points)).declare(hp, "unfreeze_depth", 0)

    def learning_rate(self, hp: keras_tuner.HyperParameters) -> float:
        """Declares (or reads) the log-scaled ``learning_rate``."""
        return self.space.declare(hp, "learning_rate")

    def _pretrained(self) -> list[str]:
        if self.weights == "none":
            return []
        return [n for n in self.backbones if self.specs.get(n).pretrainable]

    def head(self, features, hp: keras_tuner.HyperParameters, seed: int, pooled: bool = False):
        """The classification head on ``features`` (the backbone's output, or already pooled).

        Its initial values and dropout masks come from ``seed`` alone, not from
        whatever was built before it: a trial that trains only the part above the
        freeze boundary starts exactly where the whole image model would.
        """
        x = features if pooled else keras.layers.GlobalAveragePooling2D(name=POOLED)(features)
        depth = self.space.declare(hp, "head_depth")
        dropout = self.space.declare(hp, "dropout")
        deepest = self.space.max_head_depth()
        for i in range(depth):
            with hp.conditional_scope("head_depth", list(range(i + 1, deepest + 1))):
                units = self.space.declare(hp, f"head_units_{i}")
            x = keras.layers.Dense(units, activation="relu", name=f"head_dense_{i}",
                                   kernel_initializer=keras.initializers.GlorotUniform(seed + 2 * i))(x)
            x = keras.layers.Dropout(dropout, name=f"head_dropout_{i}", seed=seed + 2 * i + 1)(x)
        if depth == 0:
            x = keras.layers.Dropout(dropout, name="head_dropout", seed=seed + 1)(x)
        # float32 under a mixed policy too: softmax (or sigmoid) and the loss need its range and precision.
        activation = "softmax" if self.findings is None else "sigmoid"  # findings: each its own yes/no
        return keras.layers.Dense(self.num_classes, activation=activation, name="predictions", dtype="float32",
                                  kernel_initializer=keras.initializers.GlorotUniform(seed + 2 * max(MAX_HEAD_DEPTH, deepest)))(x)


def head_seed() -> int:
    """A seed for the head, drawn from the global random state ``keras.utils.set_random_seed`` sets."""
    return random.randrange(2**30)


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


def compile_model(model: keras.Model, learning_rate: float, steps_per_execution: int = 1) -> None:
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
        steps_per_execution=steps_per_execution,
    )


def weighted_loss(y, probs, weights) -> float:
    """The class-weighted cross-entropy sum(w·l)/sum(w) of probabilities ``probs`` for labels ``y``."""
    picked = np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)
    return float((weights * -np.log(picked)).sum() / weights.sum())
