"""Temperature scaling and the operating point's threshold, on arrays."""

import numpy as np
import pytest

from cxr_tuner.data.errors import UserError
from cxr_tuner.search.figures import calibration, findings as ml, operating_point
from cxr_tuner.search.figures.metrics import expected_calibration_error


def _overconfident(n, seed):
    """Labels and probabilities of a 3-class model that is right 70% of the time but says 99%."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    guess = np.where(rng.random(n) < 0.7, labels, (labels + 1) % 3)
    probs = np.full((n, 3), 0.005)
    probs[np.arange(n), guess] = 0.99
    return labels, probs


def test_temperature_from_validation_softens_an_overconfident_model_and_lowers_test_ece():
    y_val, p_val = _overconfident(400, 0)
    y_test, p_test = _overconfident(400, 1)
    temperature = calibration.fit_temperature(y_val, p_val)
    assert temperature > 1
    before = expected_calibration_error(y_test, p_test)
    after = expected_calibration_error(y_test, calibration.scale(p_test, temperature))
    assert before > 0.25 and after < 0.05
    assert (calibration.scale(p_test, temperature).argmax(1) == p_test.argmax(1)).all()


@pytest.mark.parametrize("target", [0.8, 0.95, 1.0])
def test_sensitivity_threshold_is_met_on_validation_with_the_fewest_misses_its_confidence_allows(target):
    rng = np.random.default_rng(2)
    is_positive = rng.random(300) < 0.3
    scores = np.clip(rng.normal(np.where(is_positive, 0.7, 0.3), 0.2), 0, 1)
    threshold = operating_point.choose_threshold(is_positive, scores, "sensitivity", target)
    assert (scores[is_positive] >= threshold).mean() >= target
    misses = int((scores[is_positive] < threshold).sum())
    assert misses == max(0, operating_point.allowed_errors(int(is_positive.sum()), target))
    # Just below the chosen positive: the same calls as a threshold at it, room for float noise.
    chosen = np.sort(scores[is_positive])[misses]
    assert chosen - 1.001e-6 <= threshold < chosen
    assert ((scores >= threshold) == (scores >= chosen)).all()


@pytest.mark.parametrize("metric", ["sensitivity", "specificity"])
def test_threshold_meets_its_target_on_new_cases_95_percent_of_the_time(metric):
    # Scores uniform on [0, 1] for the side the target is about: the true rate at t is known,
    # 1 - t for sensitivity and t for specificity; the validation quantile meets it about half the time.
    rng = np.random.default_rng(4)
    target, cases, draws = 0.9, 200, 400
    met = []
    for _ in range(draws):
        scores = rng.random(cases)
        is_positive = np.full(cases, metric == "sensitivity")
        t = operating_point.choose_threshold(is_positive, scores, metric, target)
        met.append((1 - t if metric == "sensitivity" else t) >= target)
    assert 0.93 <= np.mean(met) <= 0.995
    assert operating_point.guarantee(cases, target)["confidence"] >= 0.95


def test_too_few_validation_cases_take_the_most_extreme_one_and_say_how_sure_it_is():
    is_positive = np.array([True] * 20 + [False] * 20)
    scores = np.linspace(0.05, 0.95, 40)[::-1]
    threshold = operating_point.choose_threshold(is_positive, scores, "sensitivity", 0.95)
    lowest = scores[is_positive].min()
    assert lowest - 1.001e-6 <= threshold < lowest and ((scores >= threshold) == (scores >= lowest)).all()
    sure = operating_point.guarantee(20, 0.95)
    assert sure["cases_needed"] == 59 and 0.6 < sure["confidence"] < 0.7  # 1 - 0.95 ** 20
    text = operating_point.guarantee_text({"guarantee": sure, "class": "COVID", "metric": "sensitivity",
                                           "target": 0.95})
    assert "needs >= 59 COVID validation films, there are 20" in text


def test_specificity_threshold_is_met_on_validation():
    rng = np.random.default_rng(3)
    is_positive = rng.random(300) < 0.3
    scores = rng.random(300)
    threshold = operating_point.choose_threshold(is_positive, scores, "specificity", 0.9)
    assert (scores[~is_positive] < threshold).mean() >= 0.9
    false_calls = int((scores[~is_positive] >= threshold).sum())
    assert false_calls == max(0, operating_point.allowed_errors(int((~is_positive).sum()), 0.9))


def test_decision_calls_the_class_at_its_threshold_else_the_best_other():
    probs = np.array([[0.3, 0.6, 0.1], [0.1, 0.5, 0.4], [0.8, 0.1, 0.1]])
    assert operating_point.decide(probs, 0, 0.25).tolist() == [0, 1, 0]
    assert operating_point.decide(probs, 0, 0.9).tolist() == [1, 1, 1]


def test_operating_point_flag_defaults_to_covid_and_refuses_bad_text():
    assert operating_point.parse(None, ("COVID", "Normal")).text() == "COVID:sensitivity=0.95"
    assert operating_point.parse(None, ("Normal", "Pneumonia")) is None
    assert operating_point.parse("off", ("COVID", "Normal")) is None
    assert operating_point.parse("Normal:specificity=0.9", ("COVID", "Normal")).metric == "specificity"
    for bad in ("COVID:recall=0.9", "Flu:sensitivity=0.9", "COVID:sensitivity=1.5"):
        with pytest.raises(UserError):
            operating_point.parse(bad, ("COVID", "Normal"))


def _confidently_wrong(n, seed):
    """A model whose top probability (0.9) is right 90% of the time, but whose misses put the truth at 0.0001.

    Its ECE is about 0: the cross-entropy, driven by the misses, still asks for a large T,
    which would make every film under-confident.
    """
    rng = np.random.default_rng(seed)
    top = rng.integers(0, 3, n)
    probs = np.zeros((n, 3))
    probs[np.arange(n), top], probs[np.arange(n), (top + 1) % 3], probs[np.arange(n), (top + 2) % 3] = 0.9, 0.0999, 1e-4
    labels = np.where(rng.random(n) < 0.9, top, (top + 2) % 3)
    return labels, probs


def test_temperature_that_raises_the_out_of_sample_ece_is_not_applied_and_says_so_with_both_figures():
    y_val, p_val = _confidently_wrong(400, 0)
    decision = calibration.choose_temperature(y_val, p_val, seed=0)
    assert decision["fitted_temperature"] > 1.5 and not decision["applied"] and decision["temperature"] == 1.0
    check = decision["check"]
    assert check["ece_with"] > check["ece_without"] and check["nll_with"] < check["nll_without"]
    text = calibration.decision_text(decision)
    assert text.startswith("not applied (T = 1)")
    assert f"{check['ece_without']:.4f} without it, {check['ece_with']:.4f} with it" in text
    # Skipping was right: on new films of the same model the fitted temperature raises the ECE too.
    y_test, p_test = _confidently_wrong(400, 1)
    assert expected_calibration_error(y_test, calibration.scale(p_test, decision["fitted_temperature"])) > \
        expected_calibration_error(y_test, p_test) + 0.1
    assert calibration.choose_temperature(y_val, p_val, seed=0) == decision  # seeded: the same decision


def test_temperature_that_lowers_the_out_of_sample_ece_is_applied():
    y_val, p_val = _overconfident(400, 0)
    decision = calibration.choose_temperature(y_val, p_val, seed=0)
    assert decision["applied"] and decision["temperature"] == decision["fitted_temperature"] > 1
    assert decision["check"]["folds"] == calibration.CHECK_FOLDS
    assert decision["check"]["ece_with"] < decision["check"]["ece_without"]
    assert calibration.decision_text(decision, "out-of-fold").startswith("applied (T = ")


def test_too_few_films_to_check_the_temperature_leave_it_at_one():
    decision = calibration.choose_temperature(np.array([0, 1, 2]), np.full((3, 3), 1 / 3) + np.eye(3) * 0.2)
    assert decision["temperature"] == 1.0 and decision["check"] is None
    assert "too few validation films" in calibration.decision_text(decision)


def _overlapping_covid(n=400, seed=5):
    """COVID probabilities: 100 COVID films, a few of them as low as most other films."""
    rng = np.random.default_rng(seed)
    y = np.where(np.arange(n) < 100, 0, 1 + np.arange(n) % 2)
    covid = np.where(y == 0, rng.beta(8, 2, n), rng.beta(1.5, 8, n))
    covid[:8] = 0.02  # eight COVID films the model all but misses
    probs = np.stack([covid, (1 - covid) * 0.6, (1 - covid) * 0.4], axis=1)
    return y, probs


def test_default_operating_point_that_calls_too_many_other_films_covid_is_refused_in_one_line():
    y, probs = _overlapping_covid()
    default = operating_point.parse(None, ("COVID", "Normal", "Viral_Pneumonia"))
    point, refused = operating_point.choose(default, ("COVID", "Normal", "Viral_Pneumonia"), y, probs)
    assert point is None
    assert refused["others_called"] > operating_point.MAX_OTHERS_CALLED > refused["others_called_argmax"]
    assert refused["how_to_ask"] == "--operating-point COVID:sensitivity=0.95"
    line = operating_point.refused_text(refused)
    assert "decides by argmax" in line and "--operating-point COVID:sensitivity=0.95" in line
    assert f"{operating_point.MAX_OTHERS_CALLED:.0%}" in line and f"{refused['others_called']:.1%}" in line


def test_explicit_operating_point_beyond_the_share_is_kept_with_a_warning():
    y, probs = _overlapping_covid()
    asked = operating_point.parse("COVID:sensitivity=0.95", ("COVID", "Normal", "Viral_Pneumonia"))
    point, refused = operating_point.choose(asked, ("COVID", "Normal", "Viral_Pneumonia"), y, probs)
    assert refused is None and point["validation"]["sensitivity"] >= 0.95
    assert point["others_called"] == pytest.approx(1 - point["validation"]["specificity"])
    assert point["others_called"] > operating_point.MAX_OTHERS_CALLED and "more than the 20%" in point["warning"]


def test_operating_point_within_the_share_states_its_cost_against_argmax():
    y, probs = _overlapping_covid()
    probs[:8, 0] = 0.7  # the eight hard COVID films are found after all
    default = operating_point.parse(None, ("COVID", "Normal", "Viral_Pneumonia"))
    point, refused = operating_point.choose(default, ("COVID", "Normal", "Viral_Pneumonia"), y, probs,
                                            chosen_on="out-of-fold")
    assert refused is None and point["warning"] is None
    assert point["others_called"] <= operating_point.MAX_OTHERS_CALLED
    is_other = y != 0
    assert point["others_called_argmax"] == pytest.approx((probs.argmax(1) == 0)[is_other].mean())
    assert "of the other out-of-fold films COVID, argmax" in operating_point.cost_text(point)


def test_guarantee_under_folds_counts_out_of_fold_films():
    sure = operating_point.guarantee(20, 0.95)
    text = operating_point.guarantee_text({"guarantee": sure, "class": "COVID", "metric": "sensitivity",
                                           "target": 0.95, "chosen_on": "out-of-fold"})
    assert "needs >= 59 COVID out-of-fold films, there are 20" in text


def test_the_temperature_check_keeps_each_patients_films_on_one_side():
    # 30 patients of 6 near-identical films: a film held out beside its patient's others in the
    # fitting part would judge the temperature on what it was fitted on.
    rng = np.random.default_rng(0)
    y = np.repeat(rng.integers(0, 3, 30), 6)
    groups = np.repeat([f"P{i}" for i in range(30)], 6)
    parts = calibration.check_folds(y, groups, seed=0)
    assert len(parts) == calibration.CHECK_FOLDS
    for fit_rows, held_out in parts:
        assert not set(groups[fit_rows]) & set(groups[held_out])
    assert sorted(np.concatenate([held for _, held in parts]).tolist()) == list(range(len(y)))
    probs = np.full((len(y), 3), 0.1) + 0.7 * np.eye(3)[y]
    decision = calibration.choose_temperature(y, probs, seed=0, groups=groups)
    assert decision["check"]["method"] == "stratified 5-fold cross-fitting grouped by patient"
    # Too few groups to check: a class needs two of them.
    assert calibration.check_folds(np.array([0, 0, 1, 1]), ["a", "a", "b", "b"]) == []


def test_the_findings_temperature_check_keeps_each_patients_films_on_one_side(monkeypatch):
    y = np.repeat(np.array([[1, 0], [0, 1], [1, 1], [0, 0]] * 5, float), 4, axis=0)
    groups = np.repeat([f"P{i}" for i in range(20)], 4)
    probs = np.clip(y * 0.8 + 0.1 + np.repeat(np.arange(20) * 1e-3, 4)[:, None], 0, 1)  # one row per patient
    fitted_on = []
    real = ml.fit_temperatures
    monkeypatch.setattr(ml, "fit_temperatures", lambda t, p, shared: fitted_on.append(p) or real(t, p, shared))
    choice = ml.choose_temperatures(y, probs, seed=0, names=["A", "B"], groups=groups)
    assert choice["check"]["folds"] == 5
    for part in fitted_on:  # every fitting part holds each of its patients' 4 films
        assert set(np.unique(part, axis=0, return_counts=True)[1]) == {4}
