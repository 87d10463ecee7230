"""Evaluate, export and predict on an assembled final model: what a user reads about it."""

import json

import numpy as np
import pytest

from search import dataset
from search.config import load_config
from search.ensemble import assemble
from search.evaluation.evaluate import evaluate
from search.export import export_model, predict_exported
from search.predict import predict_images


def _quiet(line):
    pass


@pytest.fixture(scope="module")
def final_run(tmp_path_factory, retrained_run):
    """A copy of the retrained run with a 2-member final model, evaluated and exported."""
    import shutil

    run = tmp_path_factory.mktemp("final") / "run"
    shutil.copytree(retrained_run, run)
    config = load_config(run)
    assemble(config, ensemble=2, point="COVID:sensitivity=0.9", log=_quiet)
    metrics = evaluate(config, log=_quiet)
    card = export_model(config, log=_quiet)
    return run, metrics, card


def test_metrics_hold_the_operating_point_beside_argmax_with_cis(final_run):
    run, metrics, _ = final_run
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
    assert "Operating point COVID sensitivity" in (run / "report" / "report.md").read_text()


def test_card_says_what_the_model_is_and_how_to_apply_the_threshold(final_run):
    run, _, card = final_run
    assert card["model"]["kind"] == "ensemble" and len(card["model"]["members"]) == 2
    assert "temperature-scaled" in card["model"]["what"]
    assert card["operating_point"]["threshold"] > 0 and "COVID" in card["operating_point"]["how_to_apply"]
    data = dataset.prepare(load_config(run), progress=False)
    images = np.asarray(data.images[data.indices("test")])
    keras_probs = predict_exported(run / "export" / "model.keras", images)
    for name in ("saved_model", "model.tflite"):
        assert np.abs(predict_exported(run / "export" / name, images) - keras_probs).max() < 1e-4


def test_predict_states_the_threshold_and_whether_each_image_reaches_it(final_run):
    run, _, card = final_run
    data = dataset.prepare(load_config(run), progress=False)
    paths = [data.examples[i].path for i in data.indices("test")[:3]]
    for entry in predict_images(run, paths):
        point = entry["operating_point"]
        assert point["threshold"] == card["operating_point"]["threshold"]
        assert point["called"] == (entry["probabilities"]["COVID"] >= point["threshold"])
