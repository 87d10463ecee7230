"""The multi-label objective: a class-weighted binary cross-entropy that leaves masked labels out.

Targets are multi-hot float rows with 1 (positive), 0 (negative) and ``MASKED`` (-1,
unknown: CheXpert's uncertain under U-Ignore). Each finding weighs its positives and
negatives apart, balanced on the training split (``w+ = n / 2P``, ``w- = n / 2(n - P)``,
n the finding's unmasked films), so a 1% finding counts as much as a 30% one.

The objective ``val_weighted_bce`` is ``sum(w * bce) / sum(w)`` over every unmasked
(film, finding) entry of the validation split, accumulated over batches, so it does not
depend on the batch size. Its NumPy twin `weighted_bce` scores saved probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
from keras import ops

from cxr_tuner.hypermodels.backbones.spec import file_safe

MASKED = -1.0
EPSILON = 1e-7  # Keras' own clip of probabilities in binary cross-entropy


@dataclass(frozen=True)
class Findings:
    """What a multi-label model answers and how its loss weighs each finding.

    Attributes:
        names: The findings, in output order.
        positive: Weight of a positive entry, per finding.
        negative: Weight of a negative entry, per finding.
    """

    names: tuple[str, ...]
    positive: tuple[float, ...]
    negative: tuple[float, ...]

    @classmethod
    def from_weights(cls, names, weights: dict) -> "Findings":
        """From a config's ``class_weights`` (``{name: {"positive": w, "negative": w}}``)."""
        return cls(tuple(names), tuple(float(weights[n]["positive"]) for n in names),
                   tuple(float(weights[n]["negative"]) for n in names))


def balanced_weights(targets: np.ndarray, names) -> dict:
    """``{name: {"positive": n / 2P, "negative": n / 2(n - P)}}`` from training targets (masked left out).

    A finding without positives or negatives gets weight 1 on the side it has (the split
    drops such findings before weights are computed; this only keeps the arithmetic finite).
    """
    targets = np.asarray(targets, dtype=np.float64)
    known = targets != MASKED
    result = {}
    for i, name in enumerate(names):
        n = float(known[:, i].sum())
        p = float((targets[:, i] == 1).sum())
        result[str(name)] = {"positive": n / (2 * p) if p else 1.0,
                             "negative": n / (2 * (n - p)) if n - p else 1.0}
    return result


def entry_weights(targets: np.ndarray, findings: Findings) -> np.ndarray:
    """The weight of each (film, finding) entry: its side's weight, 0 where masked."""
    targets = np.asarray(targets, dtype=np.float64)
    weights = np.where(targets == 1, np.asarray(findings.positive), np.asarray(findings.negative))
    return np.where(targets == MASKED, 0.0, weights)


def weighted_bce(targets: np.ndarray, probs: np.ndarray, findings: Findings) -> float:
    """The objective on saved probabilities: ``sum(w * bce) / sum(w)`` over unmasked entries."""
    targets = np.asarray(targets, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), EPSILON, 1 - EPSILON)
    y = np.where(targets == MASKED, 0.0, targets)
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    weights = entry_weights(targets, findings)
    return float((weights * bce).sum() / max(weights.sum(), 1e-12))


def _entries(y_true, y_pred, positive, negative):
    """(weighted bce, weights) per entry, as tensors."""
    y_true = ops.cast(y_true, "float32")
    known = ops.cast(ops.not_equal(y_true, MASKED), "float32")
    y = y_true * known
    p = ops.clip(ops.cast(y_pred, "float32"), EPSILON, 1 - EPSILON)
    bce = -(y * ops.log(p) + (1 - y) * ops.log(1 - p))
    weights = known * (y * positive + (1 - y) * negative)
    return weights * bce, weights


@keras.saving.register_keras_serializable(package="cxr")
class WeightedBinaryCrossentropy(keras.losses.Loss):
    """Training loss: per film, the weighted bce of its unmasked findings over the number of findings."""

    def __init__(self, positive, negative, name="weighted_bce_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.positive, self.negative = [float(v) for v in positive], [float(v) for v in negative]

    def call(self, y_true, y_pred):
        losses, _ = _entries(y_true, y_pred, ops.convert_to_tensor(self.positive), ops.convert_to_tensor(self.negative))
        return ops.mean(losses, axis=-1)

    def get_config(self):
        return {**super().get_config(), "positive": self.positive, "negative": self.negative}


@keras.saving.register_keras_serializable(package="cxr")
class WeightedBCEMetric(keras.metrics.Metric):
    """``sum(w * bce) / sum(w)`` accumulated over every batch: on validation, the search's objective."""

    def __init__(self, positive, negative, name="weighted_bce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.positive, self.negative = [float(v) for v in positive], [float(v) for v in negative]
        self.total = self.add_variable((), initializer="zeros", name="total")
        self.weight = self.add_variable((), initializer="zeros", name="weight")

    def update_state(self, y_true, y_pred, sample_weight=None):
        losses, weights = _entries(y_true, y_pred, ops.convert_to_tensor(self.positive),
                                   ops.convert_to_tensor(self.negative))
        self.total.assign_add(ops.sum(losses))
        self.weight.assign_add(ops.sum(weights))

    def result(self):
        return self.total / ops.maximum(self.weight, 1e-12)

    def reset_state(self):
        self.total.assign(0.0)
        self.weight.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "positive": self.positive, "negative": self.negative}


@keras.saving.register_keras_serializable(package="cxr")
class MaskedBinaryAccuracy(keras.metrics.Metric):
    """The share of unmasked (film, finding) entries called right at 0.5."""

    def __init__(self, name="accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.right = self.add_variable((), initializer="zeros", name="right")
        self.count = self.add_variable((), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "float32")
        known = ops.cast(ops.not_equal(y_true, MASKED), "float32")
        called = ops.cast(ops.greater_equal(ops.cast(y_pred, "float32"), 0.5), "float32")
        self.right.assign_add(ops.sum(known * ops.cast(ops.equal(called, y_true), "float32")))
        self.count.assign_add(ops.sum(known))

    def result(self):
        return self.right / ops.maximum(self.count, 1.0)

    def reset_state(self):
        self.right.assign(0.0)
        self.count.assign(0.0)


@keras.saving.register_keras_serializable(package="cxr")
class FindingAUC(keras.metrics.AUC):
    """ROC AUC of one finding's output, its masked films left out (Keras' 200-threshold estimate)."""

    def __init__(self, index: int, name=None, **kwargs):
        super().__init__(name=name or f"auc_{index}", **kwargs)
        self.index = int(index)

    def update_state(self, y_true, y_pred, sample_weight=None):
        y = ops.cast(y_true, "float32")[:, self.index]
        known = ops.cast(ops.not_equal(y, MASKED), "float32")
        return super().update_state(y * known, ops.cast(y_pred, "float32")[:, self.index], sample_weight=known)

    def get_config(self):
        return {**super().get_config(), "index": self.index}


def auc_metric_name(name: str) -> str:
    """The Keras metric name of a finding's AUC (``val_`` + this on validation)."""
    return f"auc_{file_safe(name)}"


def compile_findings(model: keras.Model, learning_rate: float, findings: Findings, steps_per_execution: int = 1) -> None:
    """Compiles a multi-label model with the weighted bce as loss and metric, and a validation AUC per finding."""
    metrics = [WeightedBCEMetric(findings.positive, findings.negative), MaskedBinaryAccuracy(),
               *(FindingAUC(i, name=auc_metric_name(n)) for i, n in enumerate(findings.names))]
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=WeightedBinaryCrossentropy(findings.positive, findings.negative),
                  metrics=metrics, steps_per_execution=steps_per_execution)
