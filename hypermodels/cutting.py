"""The search's HyperModel on the activation cache, and cutting a backbone at its freeze boundary.

A pretrained backbone's frozen part is a pure function of the image (BatchNorm
stays in inference mode), so the search computes it once and every trial trains
only the part above the freeze boundary: the head alone on pooled features for
``unfreeze_depth`` 0, the top ``d`` blocks plus the head on the activations at
``unfreeze_points[d - 1]`` otherwise. The hyperparameters are exactly those of
:class:`XrayClassifier`, so a trial's values rebuild the whole image model.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable

import keras
import keras_tuner
import tensorflow as tf

from cxr_tuner.hypermodels import precision
from cxr_tuner.hypermodels.classifier import POOLED, XrayClassifier, head_seed
from cxr_tuner.hypermodels.backbones.spec import BackboneSpec, file_safe
from cxr_tuner.hypermodels.weights import starts_pretrained

STEPS_PER_EXECUTION = 16
"""Training steps per call into TensorFlow: a trial's small steps are dominated by
Python overhead between steps, not by the arithmetic."""

DatasetsFor = Callable[..., tuple]
"""``(backbone, unfreeze depth or None for the image model, initial epoch, fold) -> (train, validation)``;
``fold`` None is the run's train and val splits (see :class:`search.tuning.activations.TrialData`)."""


def cut_layer(spec: BackboneSpec, depth: int) -> str:
    """Name of the layer whose output is the input of the trainable part at ``depth``."""
    return spec.unfreeze_points[depth - 1] if depth else POOLED


def frozen_image_model(classifier: XrayClassifier, backbone: str) -> keras.Model:
    """The image model of ``backbone`` with its whole backbone frozen (the head is irrelevant)."""
    hp = keras_tuner.HyperParameters()
    hp.values.update(backbone=backbone, unfreeze_depth=0)
    return classifier.build(hp)


def frozen_model(model: keras.Model, source: str | None, cuts: list[str]) -> keras.Model:
    """The frozen part of ``model`` from layer ``source`` (None: the image) to layers ``cuts``."""
    inputs = model.input if source is None else model.get_layer(source).output
    return keras.Model(inputs, [model.get_layer(c).output for c in cuts])


class ActivationClassifier(keras_tuner.HyperModel):
    """:class:`XrayClassifier` whose trials train on cached frozen activations.

    ``build(hp)`` returns only the part of ``hp``'s image model above its freeze
    boundary: the backbone's top blocks (copies of a template image model's, with
    its pretrained values) and the head, on an input shaped like the cached
    activations. The backbone itself is built once per process, not per trial.
    ``fit`` trains on the matching cached activations. Backbones trained from
    scratch have no frozen part: they build and fit on images.

    Args:
        classifier: The image model whose hyperparameters are searched.
        datasets: Gives the ``(train, validation)`` data for a backbone, an
            unfreeze depth (``None``: images, for the whole model) and the epoch
            the fit starts at.
        templates: Gives the :func:`frozen_image_model` of a backbone, built once
            (e.g. the one the activation cache extracted with); by default built
            here on first use.
        cached: ``(backbone, depth) -> bool``: whether that depth's activations are
            cached; the others build and train the whole image model on images (a
            cache size budget leaves the deeper cuts out). By default every depth.
    """

    def __init__(self, classifier: XrayClassifier, datasets: DatasetsFor,
                 templates: Callable[[str], keras.Model] | None = None,
                 cached: Callable[[str, int], bool] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.classifier = classifier
        self.datasets = datasets
        self.cached = cached
        self._templates = templates or functools.cache(functools.partial(frozen_image_model, classifier))

    def frozen_depth(self, hp: keras_tuner.HyperParameters) -> int | None:
        """The unfreeze depth of ``hp``'s backbone, or None when nothing of it is frozen."""
        if not is_cacheable(self.classifier.specs.get(hp.values["backbone"]), self.classifier.weights):
            return None
        depth = hp.values.get("unfreeze_depth", 0)
        return None if self.cached and not self.cached(hp.values["backbone"], depth) else depth

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        with precision.policy(self.classifier.precision):
            return self._build_in_policy(hp)

    def _build_in_policy(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        name = self.classifier.backbone(hp)
        spec = self.classifier.specs.get(name)
        if not is_cacheable(spec, self.classifier.weights):
            return self.classifier.build(hp)
        depth = self.classifier.unfreeze_depth(hp, spec)
        if self.cached and not self.cached(name, depth):
            return self.classifier.build(hp)
        seed = head_seed()  # first, as in the image model: the same head for the same seed
        template = self._templates(name)  # never trained: trials train copies of its blocks
        cut = cut_layer(spec, depth)
        inputs = keras.Input(template.get_layer(cut).output.shape[1:], name=cut)
        features = inputs
        if depth:
            blocks = keras.Model(template.get_layer(cut).output, template.get_layer(POOLED).input)
            copy = keras.models.clone_model(blocks, input_tensors=inputs)
            for layer in copy.layers:
                if layer.weights:
                    layer.set_weights(template.get_layer(layer.name).get_weights())
                # BatchNorm stays in inference mode, as in the image model.
                layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
            features = copy.output
        outputs = self.classifier.head(features, hp, seed, pooled=not depth)
        model = keras.Model(inputs, outputs, name=f"cxr_{file_safe(name)}_above_{cut}")
        self.classifier.compile(model, self.classifier.learning_rate(hp), steps_per_execution=STEPS_PER_EXECUTION)
        return model

    def fit(self, hp, model, *args, fold=None, **kwargs):
        """Fits ``model`` on its data; ``fold``: a fold of train+val instead of the train split (``--folds``)."""
        depth = self.frozen_depth(hp)
        train, validation = self.datasets(hp.values["backbone"], depth, kwargs.get("initial_epoch", 0), fold)
        with contextlib.nullcontext() if depth is None else without_graph_rewrites():
            return model.fit(train, validation_data=validation, **kwargs)

    def predict_validation(self, hp: keras_tuner.HyperParameters, model: keras.Model, fold=None):
        """``model``'s probabilities on the validation split (or ``fold``'s validation rows), in row order,
        from the data it trains on (cached activations or images)."""
        depth = self.frozen_depth(hp)
        # The films alone: a validation pipeline that also holds re-rendered copies ranks, it is not predicted.
        validation = self.datasets(hp.values["backbone"], depth, 0, fold, clean=True)[1]
        with contextlib.nullcontext() if depth is None else without_graph_rewrites():
            return model.predict(validation, verbose=0)

    def evaluate_validation(self, hp: keras_tuner.HyperParameters, model: keras.Model) -> dict:
        """``model``'s metrics on the validation data its fits score on, named as in a fit's logs (``val_...``)."""
        depth = self.frozen_depth(hp)
        validation = self.datasets(hp.values["backbone"], depth, 0, None)[1]
        with contextlib.nullcontext() if depth is None else without_graph_rewrites():
            logs = model.evaluate(validation, verbose=0, return_dict=True)
        return {f"val_{name}": float(value) for name, value in logs.items()}

    def image_model(self, hp: keras_tuner.HyperParameters, trained: keras.Model) -> keras.Model:
        """The whole image model of ``hp`` holding the values of ``trained``, a model of :meth:`build`.

        Layers above the freeze boundary take ``trained``'s values by name; the frozen
        part keeps the pretrained ones, which ``trained`` was fed the activations of.
        """
        if self.frozen_depth(hp) is None:
            return trained  # built and trained whole, on images
        model = self.classifier.build(hp)
        for layer in trained.layers:
            if layer.weights:
                model.get_layer(layer.name).set_weights(layer.get_weights())
        return model


@contextlib.contextmanager
def without_graph_rewrites():
    """Runs TensorFlow functions first called inside without Grappler's graph rewrites.

    Every trial traces fresh train and test functions, and rewriting each one
    costs more than it saves on the few layers a trial trains on cached
    activations, with the same scores (docs/performance.md). TensorFlow reads
    the option when a function first runs; the activation extraction keeps the
    rewrites, so the cached values do not change.
    """
    before = tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer", False)
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": before})


def is_cacheable(spec: BackboneSpec, weights: str) -> bool:
    """Whether the backbone has a frozen part under ``weights``: it starts pretrained, not from scratch."""
    return starts_pretrained(spec, weights)
