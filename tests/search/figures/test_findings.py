"""Multi-label figures, temperatures and thresholds, on tiny arrays: checked against scikit-learn and hand counts."""

import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from cxr_tuner.search.evaluation.plots import plot_finding_roc
from cxr_tuner.search.figures.finding_report import findings_table
from cxr_tuner.data.errors import UserError
from cxr_tuner.search.figures import findings as ml
from cxr_tuner.search.figures import operating_point
from cxr_tuner.search.figures.metrics import bootstrap_weights, group_codes

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
    codes = group_codes(np.array(["A", "B", "A", "", "", "B", "C"]), 7)
    assert codes[0] == codes[2] and codes[1] == codes[5] and len(set(codes)) == 5  # each "" its own
    weights = bootstrap_weights(codes, 500, seed=0)
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


def _miscalibrated(n, temperatures, seed, masked=0.1):
    """Films whose labels follow sigmoid(z) while the model says sigmoid(z * T): T > 1 over-confident."""
    rng = np.random.default_rng(seed)
    temperatures = np.asarray(temperatures, float)
    z = rng.normal(size=(n, len(temperatures))) * 1.5 + np.linspace(-2, 0, len(temperatures))
    y = (rng.random(z.shape) < 1 / (1 + np.exp(-z))).astype(float)
    y[rng.random(z.shape) < masked] = ml.MASKED
    return y, 1 / (1 + np.exp(-z * temperatures))


def _mean_ece(y, probs):
    return np.mean([ml._binary_ece(y[y[:, j] != ml.MASKED, j] == 1, probs[y[:, j] != ml.MASKED, j])
                    for j in range(y.shape[1])])


def test_temperatures_recover_known_ones_and_ignore_masked_entries():
    y, probs = _miscalibrated(4000, [0.5, 1.0, 2.5], seed=0)
    own = ml.fit_temperatures(y, probs, shared=False)
    np.testing.assert_allclose(own, [0.5, 1.0, 2.5], rtol=0.1)
    y2, probs2 = _miscalibrated(4000, [2.0, 2.0, 2.0], seed=1)
    shared = ml.fit_temperatures(y2, probs2, shared=True)
    assert shared.shape == (3,) and len(set(shared)) == 1 and shared[0] == pytest.approx(2.0, rel=0.1)
    scrambled = probs.copy()
    scrambled[y == ml.MASKED] = 0.999
    np.testing.assert_array_equal(ml.fit_temperatures(y, scrambled, shared=False), own)
    np.testing.assert_allclose(ml.scale(probs, np.ones(3)), probs, atol=1e-12)
    softer = ml.scale(probs, own)
    assert (np.argsort(softer[:, 2]) == np.argsort(probs[:, 2])).all()
    assert np.abs(softer[:, 2] - 0.5).mean() < np.abs(probs[:, 2] - 0.5).mean()


def test_a_label_with_one_kind_of_film_keeps_temperature_one():
    y, probs = _miscalibrated(300, [3.0, 3.0], seed=2)
    y[:, 1] = np.where(y[:, 1] == ml.MASKED, ml.MASKED, 0)
    assert ml.fit_temperatures(y, probs, shared=False)[1] == 1.0
    choice = ml.choose_temperatures(y, probs, seed=0, names=["A", "B"])
    assert choice["modes"][1] == "none" and choice["check"]["per_label"]["B"]["reason"] == "one_kind_of_film"
    too_few = ml.choose_temperatures(y[:1], probs[:1], names=["A", "B"])
    assert too_few["check"] is None and (too_few["temperatures"] == 1).all() and "too few" in too_few["text"]


def test_choice_per_label_lowers_the_ece_of_new_films_and_says_so_in_one_line():
    temperatures = [0.6, 1.5, 4.0]
    y_val, p_val = _miscalibrated(1500, temperatures, seed=3)
    y_test, p_test = _miscalibrated(4000, temperatures, seed=4)
    choice = ml.choose_temperatures(y_val, p_val, seed=0, names=NAMES)
    assert choice["modes"][0] == choice["modes"][2] == "per_label"  # one shared T cannot fit 0.6 and 4
    np.testing.assert_allclose(choice["temperatures"][[0, 2]], [0.6, 4.0], rtol=0.15)
    assert _mean_ece(y_test, ml.scale(p_test, choice["temperatures"])) < 0.5 * _mean_ece(y_test, p_test)
    assert "\n" not in choice["text"] and "own T for Effusion (0.5" in choice["text"] and "5-fold" in choice["text"]
    assert ml.choose_temperatures(y_val, p_val, seed=0, names=NAMES)["modes"] == choice["modes"]
    by_nll = ml.choose_temperatures(y_val, p_val, seed=0, names=NAMES, criterion="nll")
    assert by_nll["check"]["criterion"] == "nll" and "cross-entropy" in by_nll["text"]


def test_a_calibrated_label_gets_no_temperature_when_none_helps():
    # Probabilities that are exactly the labels' frequencies: nothing lowers the held-out ECE.
    y = np.array([[1], [0], [0], [0]] * 50, float)
    probs = np.full((200, 1), 0.25)
    choice = ml.choose_temperatures(y, probs, seed=0, names=["A"])
    assert choice["modes"] == ["none"] and choice["mode"] == "none" and choice["temperatures"][0] == 1.0


def test_points_parse_comma_separated_and_repeated_and_refuse_in_one_line_listing_the_labels():
    assert ml.parse_points(None, NAMES) == {} == ml.parse_points([], NAMES) == ml.parse_points([" , "], NAMES)
    points = ml.parse_points(["Effusion:sensitivity=0.9, Nodule:specificity=0.95", "Cardiomegaly:sensitivity=1"],
                             NAMES)
    assert points == {"Effusion": ("sensitivity", 0.9), "Nodule": ("specificity", 0.95),
                      "Cardiomegaly": ("sensitivity", 1.0)}
    for bad in ("Efusion:sensitivity=0.9", "Effusion:recall=0.9", "Effusion:sensitivity=1.5",
                "Effusion:sensitivity=0", "Effusion:sensitivity=0.9.1", "Effusion=0.9",
                "Effusion:sensitivity=0.9,Effusion:specificity=0.9"):
        with pytest.raises(UserError) as error:
            ml.parse_points([bad], NAMES)
        message = str(error.value)
        assert "\n" not in message and "Effusion, Nodule, Cardiomegaly" in message, message


def _scores(n, seed):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 3)) < [0.3, 0.1, 0.5]).astype(float)
    probs = np.clip(rng.normal(np.where(y == 1, 0.65, 0.35), 0.2), 0, 1)
    y[rng.random((n, 3)) < 0.1] = ml.MASKED
    return y, probs


def test_asked_points_meet_their_target_on_validation_with_operating_points_rule():
    y, probs = _scores(600, 0)
    points = {"Effusion": ("sensitivity", 0.9), "Nodule": ("specificity", 0.8)}
    chosen = ml.choose_thresholds(y, probs, NAMES, points)
    for j, (name, (metric, target)) in enumerate(points.items()):
        rows = y[:, j] != ml.MASKED
        truth, scores = y[rows, j] == 1, probs[rows, j]
        record = chosen[name]
        assert record["rule"] == "asked" and record["metric"] == metric and record["target"] == target
        assert record["threshold"] == operating_point.choose_threshold(truth, scores, metric, target)
        called = scores >= record["threshold"]
        achieved = called[truth].mean() if metric == "sensitivity" else (~called[~truth]).mean()
        assert achieved >= target and record["validation"][metric] == pytest.approx(achieved)
        assert f"{metric} >= {target:g}" in record["rule_text"] and record["guarantee"]["cases"] > 0
    assert chosen["Cardiomegaly"]["rule"] == "youden"


def test_the_default_threshold_maximises_youdens_j_on_validation():
    # Positives 0.9, 0.8, 0.4; negatives 0.7, 0.3, 0.2, 0.1: J is 0.75 at 0.4 (every positive, 3 of 4
    # negatives), above 0.667 at 0.8; the threshold sits just below 0.4, above the negative at 0.3.
    y = np.array([[1], [1], [1], [0], [0], [0], [0], [ml.MASKED]])
    probs = np.array([[0.9], [0.8], [0.4], [0.7], [0.3], [0.2], [0.1], [0.35]])
    record = ml.choose_thresholds(y, probs, ["A"], {})["A"]
    assert record["rule"] == "youden" and record["youden_j"] == pytest.approx(0.75)
    assert 0.4 - 1.001e-6 <= record["threshold"] < 0.4
    assert record["validation"] == {"sensitivity": 1.0, "specificity": 0.75, "positives": 3, "negatives": 4}
    assert "Youden" in record["rule_text"]
    # On random films: no threshold on validation has a larger J.
    y, probs = _scores(500, 1)
    for j, name in enumerate(NAMES):
        record = ml.choose_thresholds(y, probs, NAMES, {})[name]
        rows = y[:, j] != ml.MASKED
        truth, scores = y[rows, j] == 1, probs[rows, j]
        best = max((scores[truth] >= t).mean() + (scores[~truth] < t).mean() - 1 for t in np.unique(scores))
        assert record["youden_j"] == pytest.approx(best)


def test_a_label_without_validation_positives_gets_one_half_with_a_reason():
    y, probs = _scores(200, 2)
    y[:, 1] = np.where(y[:, 1] == 1, ml.MASKED, y[:, 1])
    chosen = ml.choose_thresholds(y, probs, NAMES, {"Nodule": ("sensitivity", 0.9)})
    assert chosen["Nodule"]["threshold"] == 0.5 and chosen["Nodule"]["rule"] == "fallback"
    assert "no positive Nodule validation film" in chosen["Nodule"]["reason"]
    assert "asked sensitivity >= 0.9" in chosen["Nodule"]["rule_text"]
    default = ml.choose_thresholds(y, probs, NAMES, {})["Nodule"]
    assert default["threshold"] == 0.5 and default["validation"]["sensitivity"] is None
    # A specificity target needs only negatives, which there are.
    assert ml.choose_thresholds(y, probs, NAMES, {"Nodule": ("specificity", 0.9)})["Nodule"]["rule"] == "asked"


def test_table_and_roc_picture(tmp_path):
    y, probs = _scores(300, 3)
    y[:, 1] = np.where(y[:, 1] == 1, 0, y[:, 1])  # no Nodule positive: no AUC, no curve
    points = ml.choose_thresholds(y, probs, NAMES, {"Effusion": ("sensitivity", 0.9)})
    metrics = ml.label_metrics(y, probs, NAMES, {n: r["threshold"] for n, r in points.items()}, n_bootstrap=50)
    table = findings_table(metrics, points)
    headline, _, body = table.partition("\n\n")
    assert headline.startswith("Macro ROC AUC ") and "micro ROC AUC" in headline and "over 2 of 3 labels" in headline
    rows = body.splitlines()
    assert len(rows) == 2 + 3 and all(row.count("|") == 14 for row in rows)
    effusion = next(row for row in rows if row.startswith("| Effusion "))
    e = metrics["per_label"]["Effusion"]
    assert f"| {e['tp']} | {e['fp']} | {e['tn']} | {e['fn']} |" in effusion and "asked sensitivity >= 0.9" in effusion
    assert "n/a (no positive film for this label)" in next(row for row in rows if row.startswith("| Nodule "))
    path = plot_finding_roc(y, probs, NAMES, tmp_path / "roc" / "findings.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
