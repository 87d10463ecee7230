"""Evaluate, export and predict on an assembled final model: what a user reads about it."""

import json
import warnings

import keras
import numpy as np
import pytest

from cxr_tuner.hypermodels.classifier import compile_model
from cxr_tuner.search.engine import dataset
from cxr_tuner.search.engine.config import load_config
from cxr_tuner.search.final.assemble import assemble
from cxr_tuner.search.figures import calibration, operating_point
from cxr_tuner.search.evaluation.evaluate import evaluate
from cxr_tuner.search.figures.class_report import final_figures, final_markdown
from cxr_tuner.search.figures.metrics import classification_metrics
from cxr_tuner.search.delivery.export import export_model, predict_exported
from cxr_tuner.search.delivery.predict import predict_images


def _quiet(line):
    pass


def _as_cached_winner(path):
    """Re-saves a winner as retrain saves one trained on cached activations: a fresh compiled model, same values.

    Its optimizer was never built (the training ran in another model), as in a run on a pretrained backbone.
    """
    trained = keras.saving.load_model(path, compile=False)
    fresh = keras.models.clone_model(trained)
    fresh.set_weights(trained.get_weights())
    compile_model(fresh, 1e-3)
    fresh.save(path)


@pytest.fixture(scope="module")
def final_run(tmp_path_factory, retrained_run):
    """A copy of the retrained run with a 2-member final model, evaluated and exported."""
    import shutil

    run = tmp_path_factory.mktemp("final") / "run"
    shutil.copytree(retrained_run, run)
    for saved in (run / "winners").glob("*/model.keras"):
        _as_cached_winner(saved)
    config = load_config(run)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # over pytest's filters: every warning of the three stages is seen
        assemble(config, ensemble=2, point="COVID:sensitivity=0.9", log=_quiet)
        metrics = evaluate(config, log=_quiet)
        card = export_model(config, log=_quiet)
    return run, metrics, card, [str(w.message) for w in caught]


def test_final_stage_evaluate_and_export_load_the_winners_without_restoring_an_optimizer(final_run):
    # The winners are saved compiled; loading them compiled (to predict only) restores an optimizer that
    # was never built, and Keras warns "Skipping variable loading for optimizer" at every load.
    assert not [message for message in final_run[3] if "Skipping variable loading for optimizer" in message]


def test_metrics_hold_the_operating_point_beside_argmax_with_cis(final_run):
    run, metrics, _, _ = final_run
    saved = json.loads((run / "report" / "metrics.json").read_text())
    point = saved["operating_point"]
    assert point["class"] == "COVID" and point["chosen_on"] == "validation"
    for decision in ("test", "test_argmax"):
        for figure in ("sensitivity", "specificity"):
            assert point[decision][figure]["ci95"] is not None
    assert point["test_argmax"]["sensitivity"]["value"] == pytest.approx(metrics["covid_sensitivity"]["value"])
    assert saved["calibration"]["fitted_on"] == "validation"
    assert {"ece_before", "ece_after", "temperature"} <= set(saved["calibration"])
    assert saved["single_vs_final"]["final_kind"] == "ensemble"
    assert saved["single_vs_final"]["single_best"]["macro_f1"]["ci95"] is not None
    assert (run / "report" / "reliability.png").is_file()
    report = (run / "report" / "report.md").read_text()
    assert "Operating point COVID sensitivity" in report
    assert point["others_called"] is not None and operating_point.cost_text(point) in report
    assert saved["calibration"]["check"]["text"] in report  # applied or not, and the two cross-fitted figures


def test_card_says_what_the_model_is_and_how_to_apply_the_threshold(final_run):
    run, _, card, _ = final_run
    assert card["model"]["kind"] == "ensemble" and len(card["model"]["members"]) == 2
    assert "temperature-scaled" in card["model"]["what"]
    assert card["operating_point"]["threshold"] > 0 and "COVID" in card["operating_point"]["how_to_apply"]
    data = dataset.prepare(load_config(run), progress=False)
    images = np.asarray(data.images[data.indices("test")])
    keras_probs = predict_exported(run / "export" / "model.keras", images)
    for name in ("saved_model", "model.tflite"):
        assert np.abs(predict_exported(run / "export" / name, images) - keras_probs).max() < 1e-4


def test_predict_states_the_threshold_and_whether_each_image_reaches_it(final_run):
    run, _, card, _ = final_run
    data = dataset.prepare(load_config(run), progress=False)
    paths = [data.examples[i].path for i in data.indices("test")[:3]]
    for entry in predict_images(run, paths):
        point = entry["operating_point"]
        assert point["threshold"] == card["operating_point"]["threshold"]
        assert point["called"] == (entry["probabilities"]["COVID"] >= point["threshold"])


def test_report_says_when_the_temperature_is_left_out_and_the_default_threshold_refused(tmp_path):
    names = ("COVID", "Normal", "Viral_Pneumonia")
    rng = np.random.default_rng(0)
    # Validation: confident misses (a large T would lower the cross-entropy, raise the ECE); overlapping COVID scores.
    top = rng.integers(0, 3, 300)
    probs = np.zeros((300, 3))
    probs[np.arange(300), top], probs[np.arange(300), (top + 1) % 3], probs[np.arange(300), (top + 2) % 3] = \
        0.9, 0.0999, 1e-4
    y_val = np.where(rng.random(300) < 0.9, top, (top + 2) % 3)
    decision = calibration.choose_temperature(y_val, probs)
    covid = np.where(y_val == 0, 0.6, 0.3)
    covid[np.flatnonzero(y_val == 0)[:10]] = 0.01
    scored = np.stack([covid, (1 - covid) / 2, (1 - covid) / 2], axis=1)
    point, refused = operating_point.choose(operating_point.parse(None, names), names, y_val, scored)
    assert not decision["applied"] and point is None and refused
    record = {"kind": "single", "members": ["1-0001"], "temperature": decision["temperature"],
              "single_temperature": decision["temperature"],
              "calibration_check": {**decision, "text": calibration.decision_text(decision)},
              "calibration_validation": calibration.summary(y_val, probs, 1.0),
              "operating_point": None, "operating_point_refused": refused, "fitted_on": "validation split only"}
    labels, test_probs = y_val[:90], probs[:90]
    metrics = classification_metrics(labels, test_probs, names)
    sections, pictures = final_figures(record, labels, test_probs, test_probs, test_probs, names, metrics)
    assert sections["calibration"]["applied"] is False
    assert sections["calibration"]["ece_before"] == sections["calibration"]["ece_after"]
    assert "operating_point" not in sections and sections["operating_point_refused"]["how_to_ask"]
    assert list(pictures) == ["Reliability diagram (test split; no temperature applied)"]
    text = final_markdown(sections)
    assert "Temperature not applied (T = 1)" in text and "with it" in text and "without it" in text
    assert "Operating point: the default COVID:sensitivity=0.95 is not used" in text
