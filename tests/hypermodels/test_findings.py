"""The multi-label objective: weighted bce by hand, masked labels left out, the sigmoid head that trains on it."""

import math

import keras
import keras_tuner
import numpy as np
import pytest

from cxr_tuner.hypermodels.classifier import OBJECTIVE_MULTILABEL, XrayClassifier
from cxr_tuner.hypermodels.findings import (MASKED, Findings, WeightedBCEMetric, WeightedBinaryCrossentropy, balanced_weights,
                                  weighted_bce)
from cxr_tuner.search.engine.task import task_of

TARGETS = np.array([[1, 0], [0, MASKED], [0, 1], [1, 0]], dtype="float32")
PROBS = np.array([[0.8, 0.3], [0.4, 0.9], [0.1, 0.6], [0.5, 0.2]], dtype="float32")


def _by_hand(findings: Findings) -> float:
    total = weight = 0.0
    for row, probs in zip(TARGETS, PROBS):
        for j, (y, p) in enumerate(zip(row, probs)):
            if y == MASKED:
                continue
            w = findings.positive[j] if y == 1 else findings.negative[j]
            total += w * -(y * math.log(p) + (1 - y) * math.log(1 - p))
            weight += w
    return total / weight


def test_balanced_weights_per_finding_leave_masked_films_out():
    weights = balanced_weights(TARGETS, ["A", "B"])
    # A: 4 known films, 2 positive -> n / 2P = 1, n / 2(n - P) = 1; B: 3 known, 1 positive.
    assert weights["A"] == {"positive": 1.0, "negative": 1.0}
    assert weights["B"] == pytest.approx({"positive": 1.5, "negative": 0.75})


def test_objective_equals_a_hand_computation_on_a_small_batch():
    findings = Findings.from_weights(["A", "B"], balanced_weights(TARGETS, ["A", "B"]))
    expected = _by_hand(findings)
    assert weighted_bce(TARGETS, PROBS, findings) == pytest.approx(expected, rel=1e-6)
    metric = WeightedBCEMetric(findings.positive, findings.negative)
    metric.update_state(TARGETS[:3], PROBS[:3])  # two batches accumulate to the whole set's value
    metric.update_state(TARGETS[3:], PROBS[3:])
    assert float(metric.result()) == pytest.approx(expected, rel=1e-5)


def test_a_masked_label_changes_neither_loss_nor_objective():
    findings = Findings(("A", "B"), (2.0, 3.0), (0.5, 0.7))
    other = PROBS.copy()
    other[1, 1] = 0.01  # the masked entry
    loss = WeightedBinaryCrossentropy(findings.positive, findings.negative)
    assert float(loss(TARGETS, PROBS)) == pytest.approx(float(loss(TARGETS, other)))
    assert weighted_bce(TARGETS, PROBS, findings) == pytest.approx(weighted_bce(TARGETS, other, findings))
    other[1, 0] = 0.01  # an unmasked entry does count
    assert weighted_bce(TARGETS, PROBS, findings) != pytest.approx(weighted_bce(TARGETS, other, findings))


def test_the_multilabel_head_is_one_sigmoid_per_finding_ranked_on_val_weighted_bce():
    findings = Findings(("A", "B"), (2.0, 1.5), (0.6, 0.8))
    model = XrayClassifier(2, 32, ("vanilla_cnn",), weights="none", findings=findings).build(
        keras_tuner.HyperParameters())
    assert model.get_layer("predictions").activation is keras.activations.sigmoid
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 1)).astype("uint8")
    logs = model.evaluate(images, TARGETS, batch_size=2, verbose=0, return_dict=True)
    probs = model.predict(images, verbose=0)
    assert "val_" + next(k for k in logs if k == "weighted_bce") == OBJECTIVE_MULTILABEL
    assert logs["weighted_bce"] == pytest.approx(weighted_bce(TARGETS, probs, findings), rel=1e-4)
    assert {"auc_A", "auc_B"} <= set(logs)


def test_hparams_shows_the_multilabel_objective_first_then_each_findings_validation_auc():
    from cxr_tuner.search.engine.config import RunConfig
    from cxr_tuner.search.tuning.hparams import run_metrics

    config = RunConfig(run_dir="r", task="multilabel", class_names=("Effusion", "Pleural_Other"))
    assert list(run_metrics(config)) == [OBJECTIVE_MULTILABEL, "val_accuracy", "val_auc_Effusion",
                                         "val_auc_Pleural_Other"]
    assert task_of(config).objective == OBJECTIVE_MULTILABEL
    assert list(run_metrics(RunConfig(run_dir="r")))[0] == "val_weighted_loss"
