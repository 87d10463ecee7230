"""The search's HyperModel: only what trains, on the frozen backbone's cached activations.

A pretrained backbone's frozen part is a pure function of the image (BatchNorm
stays in inference mode), so the search computes it once and every trial trains
only the part above the freeze boundary: the head alone on pooled features for
``unfreeze_depth`` 0, the top ``d`` blocks plus the head on the activations at
``unfreeze_points[d - 1]`` otherwise. The hyperparameters are exactly those of
:class:`XrayClassifier`, so a trial's values rebuild the whole image model.
"""

from __future__ import annotations

from typing import Callable

import keras
import keras_tuner

from hypermodels.classifier import XrayClassifier, compile_model
from hypermodels.registry import BackboneSpec, get_backbone

POOLED = "head_pool"
"""Layer whose output (the backbone's globally pooled features) feeds the head."""

DatasetsFor = Callable[[str, "int | None"], tuple]
"""``(backbone, unfreeze depth or None for the image model) -> (train, validation)``."""


def cut_layer(spec: BackboneSpec, depth: int) -> str:
    """Name of the layer whose output is the input of the trainable part at ``depth``."""
    return spec.unfreeze_points[depth - 1] if depth else POOLED


def top_model(model: keras.Model, cut: str) -> keras.Model:
    """The part of a built functional ``model`` above layer ``cut``, sharing its weights."""
    return keras.Model(model.get_layer(cut).output, model.output, name=f"{model.name}_above_{cut}")


def frozen_model(model: keras.Model, source: str | None, cuts: list[str]) -> keras.Model:
    """The frozen part of ``model`` from layer ``source`` (None: the image) to layers ``cuts``."""
    inputs = model.input if source is None else model.get_layer(source).output
    return keras.Model(inputs, [model.get_layer(c).output for c in cuts])


class CachedFeatureClassifier(keras_tuner.HyperModel):
    """:class:`XrayClassifier` whose trials train on cached frozen activations.

    ``build(hp)`` builds the image model for ``hp`` and returns the part above its
    freeze boundary; ``fit`` trains it on the matching cached activations. Backbones
    trained from scratch have no frozen part: they build and fit on images.

    Args:
        classifier: The image model whose hyperparameters are searched.
        datasets: Gives the ``(train, validation)`` data for a backbone and an
            unfreeze depth (``None``: images, for the whole model).
    """

    def __init__(self, classifier: XrayClassifier, datasets: DatasetsFor, **kwargs):
        super().__init__(**kwargs)
        self.classifier = classifier
        self.datasets = datasets

    def frozen_depth(self, hp: keras_tuner.HyperParameters) -> int | None:
        """The unfreeze depth of ``hp``'s backbone, or None when nothing of it is frozen."""
        if not is_cacheable(hp.values["backbone"], self.classifier.weights):
            return None
        return hp.values.get("unfreeze_depth", 0)

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        model = self.classifier.build(hp)
        depth = self.frozen_depth(hp)
        if depth is None:
            return model
        top = top_model(model, cut_layer(get_backbone(hp.values["backbone"]), depth))
        compile_model(top, hp.values["learning_rate"])
        return top

    def fit(self, hp, model, *args, **kwargs):
        train, validation = self.datasets(hp.values["backbone"], self.frozen_depth(hp))
        return model.fit(train, validation_data=validation, **kwargs)


def is_cacheable(backbone: str, weights: str) -> bool:
    """Whether ``backbone`` has a frozen part under ``weights`` (pretrained, not from scratch)."""
    return weights != "none" and get_backbone(backbone).pretrainable
