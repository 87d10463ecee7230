"""Multi-label figures, temperatures and thresholds, on tiny arrays: checked against scikit-learn and hand counts."""

import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from data.errors import UserError
from search.evaluation import multilabel as ml
from search.evaluation import operating_point

NAMES = ["Effusion", "Nodule", "Cardiomegaly"]


def _case(n=120, seed=0, masked=0.15):
    """Labels (with masked entries), informative probabilities and 3 films per patient."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 3)) - 0.5
    y = (rng.random((n, 3)) < 1 / (1 + np.exp(-2 * z))).astype(float)
    probs = 1 / (1 + np.exp(-(2 * z + rng.normal(0, 1, (n, 3)))))
    y[rng.random((n, 3)) < masked] = ml.MASKED
    groups = np.array([f"P{i // 3}" for i in range(n)])
    return y, probs, groups


def _half(names=NAMES):
    return {name: 0.5 for name in names}


def test_figures_match_sklearn_and_hand_counts_on_the_unmasked_films():
    y, probs, groups = _case()
    m = ml.label_metrics(y, probs, NAMES, {"Effusion": 0.3, "Nodule": 0.5, "Cardiomegaly": 0.7}, groups,
                         n_bootstrap=200)
    json.dumps(m)
    for j, name in enumerate(NAMES):
        rows = y[:, j] != ml.MASKED
        truth, scores = y[rows, j] == 1, probs[rows, j]
        row = m["per_label"][name]
        assert row["roc_auc"]["value"] == pytest.approx(roc_auc_score(truth, scores))
        assert row["average_precision"]["value"] == pytest.approx(average_precision_score(truth, scores))
        called = scores >= row["threshold"]
        assert (row["tp"], row["fp"], row["tn"], row["fn"]) == (
            (called & truth).sum(), (called & ~truth).sum(), (~called & ~truth).sum(), (~called & truth).sum())
        assert (row["positives"], row["negatives"], row["masked"]) == (truth.sum(), (~truth).sum(), (~rows).sum())
        assert row["sensitivity"]["value"] == pytest.approx(called[truth].mean())
        assert row["specificity"]["value"] == pytest.approx((~called[~truth]).mean())
        assert row["precision"]["value"] == pytest.approx(truth[called].mean())
        assert row["prevalence"] == pytest.approx(truth.mean())
    pooled = y != ml.MASKED
    assert m["micro_auc"]["value"] == pytest.approx(roc_auc_score(y[pooled] == 1, probs[pooled]))
    assert m["macro_auc"]["value"] == pytest.approx(np.mean([m["per_label"][n]["roc_auc"]["value"] for n in NAMES]))


def test_ece_bins_the_positive_probability():
    # Two bins used: 0.1 (1 of 4 positive: gap 0.15) and 0.9 (all 4 positive: gap 0.1) -> (0.6 + 0.4) / 8.
    y = np.array([[0], [0], [0], [1], [1], [1], [1], [1]], float)
    probs = np.array([[0.1]] * 4 + [[0.9]] * 4)
    m = ml.label_metrics(y, probs, ["A"], _half(["A"]), n_bootstrap=0)
    assert m["per_label"]["A"]["ece"] == {"value": pytest.approx(0.125), "n_bins": 15}


def test_the_bootstrap_is_the_weighted_full_formula():
    # Unit weights give scikit-learn's figures, and integer weights those of the films repeated.
    rng = np.random.default_rng(5)
    truth = rng.random(60) < 0.4
    scores = np.round(rng.random(60), 1)  # ties
    ones = np.ones((1, 60))
    auc, ap = ml._weighted_auc_ap(ones, np.arange(60), truth, scores)
    assert auc[0] == pytest.approx(roc_auc_score(truth, scores)) and ap[0] == pytest.approx(
        average_precision_score(truth, scores))
    counts = rng.integers(0, 4, 60)
    auc, ap = ml._weighted_auc_ap(counts[None].astype(float), np.arange(60), truth, scores)
    repeated = np.repeat(np.arange(60), counts)
    assert auc[0] == pytest.approx(roc_auc_score(truth[repeated], scores[repeated]))
    assert ap[0] == pytest.approx(average_precision_score(truth[repeated], scores[repeated]))


def test_a_masked_entry_changes_no_figure():
    y, probs, groups = _case()
    first = ml.label_metrics(y, probs, NAMES, _half(), groups, n_bootstrap=100)
    other = probs.copy()
    other[y == ml.MASKED] = np.random.default_rng(9).random(int((y == ml.MASKED).sum()))
    assert ml.label_metrics(y, other, NAMES, _half(), groups, n_bootstrap=100) == first
    # ... while the same change on unmasked entries does change them (the check can fail).
    other[y == 1] = 0.01
    assert ml.label_metrics(y, other, NAMES, _half(), groups, n_bootstrap=100) != first


def test_ci_holds_the_estimate_and_is_deterministic_for_a_seed():
    y, probs, groups = _case()
    m = ml.label_metrics(y, probs, NAMES, _half(), groups, n_bootstrap=300, seed=3)
    figures = [m["macro_auc"], m["micro_auc"], m["macro_ap"]] + [
        m["per_label"][n][f] for n in NAMES for f in ("roc_auc", "average_precision", "sensitivity")]
    for figure in figures:
        lo, hi = figure["ci95"]
        assert lo <= figure["value"] <= hi and lo < hi
    assert ml.label_metrics(y, probs, NAMES, _half(), groups, n_bootstrap=300, seed=3) == m
    assert ml.label_metrics(y, probs, NAMES, _half(), groups, n_bootstrap=300, seed=4) != m


def test_the_bootstrap_draws_patients_and_keeps_their_films_together():
    codes = ml._group_codes(np.array(["A", "B", "A", "", "", "B", "C"]), 7)
    assert codes[0] == codes[2] and codes[1] == codes[5] and len(set(codes)) == 5  # each "" its own
    weights = ml._bootstrap_weights(codes, 500, seed=0)
    assert (weights[:, 0] == weights[:, 2]).all() and (weights[:, 1] == weights[:, 5]).all()
    assert (weights[:, 3] != weights[:, 4]).any()
    assert (weights[:, [0, 1, 3, 4, 6]].sum(axis=1) == 5).all()  # 5 groups drawn per resample, not 7 films
    # 8 patients of 25 near-identical films each: drawing films hides that there are only
    # 8 independent patients, so the patient-level interval is much wider.
    rng = np.random.default_rng(1)
    patient_positive = np.array([1, 1, 0, 1, 0, 0, 1, 0], float)
    patient_score = np.array([0.9, 0.4, 0.5, 0.7, 0.2, 0.6, 0.8, 0.1])
    y = np.repeat(patient_positive, 25)[:, None]
    probs = np.clip(np.repeat(patient_score, 25) + rng.normal(0, 0.01, 200), 0, 1)[:, None]
    groups = np.repeat([f"P{i}" for i in range(8)], 25)
    width = {}
    for name, g in (("films", None), ("patients", groups)):
        m = ml.label_metrics(y, probs, ["A"], _half(["A"]), g, n_bootstrap=400)
        lo, hi = m["per_label"]["A"]["roc_auc"]["ci95"]
        width[name] = hi - lo
        assert m["n_groups"] == (200 if g is None else 8)
    assert width["patients"] > 3 * width["films"]


def test_undefined_figures_are_none_with_a_reason_and_stay_out_of_the_macro():
    y, probs, _ = _case()
    y[:, 2] = np.where(y[:, 2] == ml.MASKED, ml.MASKED, 0)  # no positive Cardiomegaly
    y[:5, 1], y[5:, 1] = 1, ml.MASKED  # Nodule: positives only
    m = ml.label_metrics(y, probs, NAMES, _half(), n_bootstrap=50)
    cardio, nodule = m["per_label"]["Cardiomegaly"], m["per_label"]["Nodule"]
    assert cardio["roc_auc"]["value"] is None and "no positive" in cardio["roc_auc"]["reason"]
    assert cardio["sensitivity"]["value"] is None and cardio["prevalence"] == 0
    assert cardio["specificity"]["value"] is not None
    assert nodule["roc_auc"]["value"] is None and "no negative" in nodule["roc_auc"]["reason"]
    assert m["macro_auc"]["labels"] == ["Effusion"]
    assert m["macro_auc"]["value"] == pytest.approx(m["per_label"]["Effusion"]["roc_auc"]["value"])
    y[:, :] = ml.MASKED
    y[0, 0] = 1
    empty = ml.label_metrics(y, probs, NAMES, _half(), n_bootstrap=50)
    assert empty["macro_auc"]["value"] is None and empty["macro_auc"]["reason"]
    assert empty["micro_auc"]["value"] is None and empty["micro_auc"]["reason"]
    assert empty["per_label"]["Nodule"]["ece"]["value"] is None and empty["per_label"]["Nodule"]["ece"]["reason"]


def test_bad_inputs_raise():
    y, probs, _ = _case(n=10)
    with pytest.raises(ValueError, match="Nodule"):
        ml.label_metrics(y, probs, NAMES, {"Effusion": 0.5, "Cardiomegaly": 0.5})
    with pytest.raises(ValueError, match="-1"):
        ml.label_metrics(y + 0.5, probs, NAMES, _half())
    with pytest.raises(ValueError, match="shape"):
        ml.label_metrics(y[:, :2], probs, NAMES, _half())
