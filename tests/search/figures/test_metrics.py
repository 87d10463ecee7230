"""The figures `evaluate` writes: checked against hand counts and scikit-learn."""

import json

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from cxr_tuner.search.figures.metrics import classification_metrics, expected_calibration_error, roc_curves

NAMES = ["COVID", "Normal", "Viral_Pneumonia"]


def _one_hot_probs(pred, k=3, confidence=0.8):
    """Probabilities whose argmax is ``pred``, the rest spread evenly."""
    probs = np.full((len(pred), k), (1 - confidence) / (k - 1))
    probs[np.arange(len(pred)), pred] = confidence
    return probs


@pytest.fixture
def small_case():
    """10 cases; confusion matrix rows = true, cols = predicted:

        COVID   [3, 1, 0]
        Normal  [0, 2, 1]
        Viral   [1, 0, 2]
    """
    y_true = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    y_pred = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 0])
    return y_true, _one_hot_probs(y_pred)


def test_small_case_matches_hand_counts(small_case):
    m = classification_metrics(*small_case, NAMES, n_bootstrap=200)
    assert m["n"] == 10
    assert m["confusion_matrix"] == {"class_names": NAMES, "matrix": [[3, 1, 0], [0, 2, 1], [1, 0, 2]]}
    assert m["accuracy"]["value"] == pytest.approx(0.7)
    covid = m["per_class"]["COVID"]
    assert (covid["tp"], covid["fp"], covid["tn"], covid["fn"], covid["support"]) == (3, 1, 5, 1, 4)
    assert covid["precision"] == pytest.approx(3 / 4) and covid["recall"] == pytest.approx(3 / 4)
    viral = m["per_class"]["Viral_Pneumonia"]
    assert (viral["tp"], viral["fp"], viral["tn"], viral["fn"]) == (2, 1, 6, 1)
    # COVID vs the rest: 3 of 4 COVID found; 5 of the 6 others not called COVID.
    assert m["covid_sensitivity"]["value"] == pytest.approx(3 / 4)
    assert m["covid_specificity"]["value"] == pytest.approx(5 / 6)


def test_figures_agree_with_sklearn_and_sit_inside_their_ci():
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3))
    logits[np.arange(300), y_true] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)

    m = classification_metrics(y_true, probs, NAMES, n_bootstrap=300)

    y_pred = probs.argmax(axis=1)
    assert m["macro_f1"]["value"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    macro_auc = roc_auc_score(y_true, probs, multi_class="ovr", average="macro")
    assert m["roc_auc"]["macro"]["value"] == pytest.approx(macro_auc)
    for name in ("accuracy", "macro_f1", "covid_sensitivity", "covid_specificity"):
        lo, hi = m[name]["ci95"]
        assert lo < m[name]["value"] < hi, name
    lo, hi = m["roc_auc"]["macro"]["ci95"]
    assert lo < macro_auc < hi
    json.dumps(m, allow_nan=False)


def test_bootstrap_is_reproducible_with_a_seed(small_case):
    first = classification_metrics(*small_case, NAMES, n_bootstrap=100, seed=7)
    again = classification_metrics(*small_case, NAMES, n_bootstrap=100, seed=7)
    assert first == again


def test_perfect_predictor_has_ci_of_one():
    y_true = np.array([0, 1, 2, 0, 1, 2, 2])
    m = classification_metrics(y_true, _one_hot_probs(y_true), NAMES, n_bootstrap=200)
    for name in ("accuracy", "macro_f1", "covid_sensitivity", "covid_specificity"):
        assert m[name] == {"value": 1.0, "ci95": [1.0, 1.0]}, name
    assert m["roc_auc"]["macro"]["value"] == 1.0


def test_class_absent_from_y_true_gives_null_auc_and_keeps_indices():
    # No Viral_Pneumonia cases, but one Normal case is wrongly called Viral.
    y_true = np.array([0, 0, 0, 1, 1, 1])
    y_pred = np.array([0, 0, 1, 1, 1, 2])
    m = classification_metrics(y_true, _one_hot_probs(y_pred), NAMES, n_bootstrap=100)

    assert m["roc_auc"]["per_class"]["Viral_Pneumonia"] is None
    assert "absent" in m["roc_auc"]["undefined"]["Viral_Pneumonia"]
    defined = [m["roc_auc"]["per_class"][n] for n in ("COVID", "Normal")]
    assert m["roc_auc"]["macro"]["value"] == pytest.approx(np.mean(defined))
    assert m["confusion_matrix"]["matrix"] == [[2, 1, 0], [0, 2, 1], [0, 0, 0]]
    assert m["per_class"]["Viral_Pneumonia"]["fp"] == 1
    # macro F1 is over the classes present: the stray Viral call only lowers Normal's recall.
    assert m["macro_f1"]["value"] == pytest.approx(f1_score(y_true, y_pred, labels=[0, 1], average="macro"))
    json.dumps(m, allow_nan=False)


def test_positive_class_absent_gives_null_sensitivity_with_reason():
    y_true = np.array([1, 1, 2, 2])
    m = classification_metrics(y_true, _one_hot_probs(y_true), NAMES, n_bootstrap=50)
    assert m["covid_sensitivity"]["value"] is None and m["covid_sensitivity"]["ci95"] is None
    assert "COVID" in m["covid_sensitivity"]["reason"]
    assert m["covid_specificity"]["value"] == 1.0


def test_two_classes_and_a_positive_class_not_in_the_names():
    y_true = np.array([0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    m = classification_metrics(y_true, probs, ["NORMAL", "PNEUMONIA"], n_bootstrap=50)
    assert m["accuracy"]["value"] == pytest.approx(3 / 5)
    assert m["roc_auc"]["per_class"]["PNEUMONIA"] == pytest.approx(roc_auc_score(y_true, probs[:, 1]))
    assert m["covid_sensitivity"]["value"] is None
    assert "not one of the class names" in m["covid_sensitivity"]["reason"]


def test_ece_is_near_zero_when_calibrated_and_large_when_overconfident():
    rng = np.random.default_rng(0)
    n = 20000
    confidence = rng.uniform(0.5, 1.0, n)
    predicted = rng.integers(0, 2, n)
    # Calibrated: the predicted class is right with exactly its stated probability.
    y_true = np.where(rng.uniform(size=n) < confidence, predicted, 1 - predicted)
    probs = np.empty((n, 2))
    probs[np.arange(n), predicted] = confidence
    probs[np.arange(n), 1 - predicted] = 1 - confidence
    assert expected_calibration_error(y_true, probs) < 0.02

    # Overconfident: always 99% sure, right only 60% of the time.
    overconfident = np.empty((n, 2))
    overconfident[np.arange(n), predicted] = 0.99
    overconfident[np.arange(n), 1 - predicted] = 0.01
    y_true = np.where(rng.uniform(size=n) < 0.6, predicted, 1 - predicted)
    m = classification_metrics(y_true, overconfident, ["a", "b"], n_bootstrap=0)
    assert m["ece"]["value"] == pytest.approx(0.39, abs=0.02)
    assert m["ece"]["n_bins"] == 15


def test_roc_curves_skip_absent_classes():
    y_true = np.array([0, 0, 1, 1])
    probs = _one_hot_probs(np.array([0, 1, 1, 1]))
    curves = roc_curves(y_true, probs, NAMES)
    assert set(curves) == {"COVID", "Normal"}
    fpr, tpr = curves["COVID"]
    assert fpr[0] == 0 and tpr[-1] == 1 and len(fpr) == len(tpr)


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="shape"):
        classification_metrics(np.array([0, 1]), np.ones((2, 2)) / 2, NAMES)
    with pytest.raises(ValueError, match="class indices"):
        classification_metrics(np.array([0, 3]), np.ones((2, 3)) / 3, NAMES)


def test_intervals_resample_patients_whose_films_are_alike():
    # 10 patients of 20 near-identical films each: drawing films hides that only 10 patients
    # were seen, so the patient-level interval of macro F1 must be much wider.
    patient_class = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 1])
    patient_call = np.array([0, 1, 2, 1, 1, 0, 0, 2, 2, 1])  # right for 6 of 10 patients
    y_true, y_pred = np.repeat(patient_class, 20), np.repeat(patient_call, 20)
    groups = np.repeat([f"P{i}" for i in range(10)], 20)
    films = classification_metrics(y_true, _one_hot_probs(y_pred), NAMES, n_bootstrap=400)
    patients = classification_metrics(y_true, _one_hot_probs(y_pred), NAMES, n_bootstrap=400, groups=groups)
    assert films["macro_f1"]["value"] == patients["macro_f1"]["value"]  # the point estimate does not change
    width = {name: np.diff(m["macro_f1"]["ci95"])[0] for name, m in (("films", films), ("patients", patients))}
    assert width["patients"] > 3 * width["films"]
    assert patients["n_groups"] == 10 and "patient / near-duplicate groups" in patients["ci_method"]
    assert films["n_groups"] == 200 and "over films" in films["ci_method"]  # said when nothing groups them
    # Films without a group ("") are each their own group: all ungrouped is the film bootstrap.
    assert classification_metrics(y_true, _one_hot_probs(y_pred), NAMES, n_bootstrap=400,
                                  groups=[""] * 200)["macro_f1"] == films["macro_f1"]
