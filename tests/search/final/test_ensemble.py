"""The final model: one Keras model averaging the winners, calibrated on validation, with a threshold."""

import json

import keras
import keras_tuner
import numpy as np
import pytest

from cxr_tuner.data.errors import UserError
from cxr_tuner.hypermodels.classifier import XrayClassifier
from cxr_tuner.search.engine import dataset
from cxr_tuner.search.engine.config import load_config
from cxr_tuner.search.final.assemble import assemble, final_card
from cxr_tuner.hypermodels.ensemble import build_ensemble, for_export, predict
from cxr_tuner.hypermodels.registry import BUILT_IN
from cxr_tuner.search.figures import calibration, operating_point
from cxr_tuner.search.delivery.export import _write_formats, predict_exported

SIZE = 32


def _member(classifier, depth, seed):
    keras.utils.set_random_seed(seed)
    hp = keras_tuner.HyperParameters()
    hp.values.update(backbone="mobilenet_025", unfreeze_depth=depth, head_depth=1, head_units_0=64, dropout=0.2)
    return classifier.build(hp)


@pytest.fixture(scope="module")
def members():
    """Three pretrained mobilenet_025 image models that unfreeze 0, 1 and 2 blocks (random heads)."""
    classifier = XrayClassifier(3, SIZE, ("mobilenet_025",), "imagenet")
    return [_member(classifier, depth, seed) for depth, seed in ((0, 1), (1, 2), (2, 3))]


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (10, SIZE, SIZE, 1)).astype("uint8")


def test_ensemble_is_one_model_giving_the_mean_of_its_members_and_runs_the_frozen_backbone_once(
        members, images, tmp_path):
    model = build_ensemble(members, [("mobilenet_025", 0), ("mobilenet_025", 1), ("mobilenet_025", 2)], specs=BUILT_IN)
    expected = np.mean([predict(m, images) for m in members], axis=0)
    assert np.abs(predict(model, images) - expected).max() < 1e-5
    shared = model.get_layer("frozen_mobilenet_025")
    # The shared part ends where the member unfreezing two blocks starts training.
    assert shared.layers[-1].name == "conv_pw_11_relu"
    assert model.count_params() < sum(m.count_params() for m in members)
    model.save(tmp_path / "ensemble.keras")
    loaded = keras.saving.load_model(tmp_path / "ensemble.keras", safe_mode=True)
    assert np.abs(predict(loaded, images) - expected).max() < 1e-5


def test_exported_ensemble_agrees_as_saved_model_and_tflite(members, images, tmp_path):
    model = build_ensemble(members, [("mobilenet_025", 0), ("mobilenet_025", 1), ("mobilenet_025", 2)],
                           temperature=1.7, specs=BUILT_IN)
    expected = predict(model, images)
    written = _write_formats(model, ("keras", "savedmodel", "tflite"), tmp_path, tmp_path)
    for path in written.values():
        assert np.abs(predict_exported(path, images) - expected).max() < 1e-4


def test_temperature_scales_the_average_inside_the_model(members, images):
    frozen = [("mobilenet_025", 0), ("mobilenet_025", 1)]
    plain = predict(build_ensemble(members[:2], frozen, specs=BUILT_IN), images)
    scaled = predict(build_ensemble(members[:2], frozen, temperature=2.5, specs=BUILT_IN), images)
    assert np.abs(scaled - calibration.scale(plain, 2.5)).max() < 1e-5
    assert (scaled.argmax(axis=1) == plain.argmax(axis=1)).all()


def test_assemble_reads_only_validation_and_fits_the_temperature_there(run_copy, monkeypatch):
    asked = []
    indices = dataset.RunData.indices
    monkeypatch.setattr(dataset.RunData, "indices", lambda self, name: asked.append(name) or indices(self, name))
    record = assemble(load_config(run_copy), ensemble=2, log=lambda line: None)
    assert "test" not in asked and "val" in asked
    data = dataset.prepare(load_config(run_copy), progress=False)
    rows = indices(data, "val")
    winners = json.loads((run_copy / "winners" / "summary.json").read_text())["winners"]
    members = [keras.saving.load_model(run_copy / "winners" / w["dir"] / "model.keras") for w in winners]
    mean = np.mean([predict(m, np.asarray(data.images[rows])) for m in members], axis=0)
    decision = calibration.choose_temperature(data.labels[rows], mean, seed=load_config(run_copy).seed)
    assert record["calibration_check"]["fitted_temperature"] == pytest.approx(calibration.fit_temperature(
        data.labels[rows], mean))
    assert record["temperature"] == pytest.approx(decision["temperature"])  # T = 1 when cross-fitting says so
    assert load_config(run_copy).layout.final_model() == run_copy / "winners" / "final"
    final = keras.saving.load_model(run_copy / "winners" / "final" / "model.keras", safe_mode=True)
    assert np.abs(predict(final, np.asarray(data.images[rows])) - calibration.scale(mean, record["temperature"])
                  ).max() < 1e-4


def test_threshold_meets_the_sensitivity_on_validation(run_copy):
    record = assemble(load_config(run_copy), ensemble=1, point="COVID:sensitivity=0.9", log=lambda line: None)
    point = record["operating_point"]
    assert point["class"] == "COVID" and point["chosen_on"] == "validation"
    assert point["validation"]["sensitivity"] >= 0.9
    data = dataset.prepare(load_config(run_copy), progress=False)
    rows = data.indices("val")
    final = keras.saving.load_model(run_copy / "winners" / "final" / "model.keras")
    covid = predict(final, np.asarray(data.images[rows]))[:, 0]
    is_covid = data.labels[rows] == 0
    assert (covid[is_covid] >= point["threshold"]).mean() >= 0.9


def test_ensemble_larger_than_the_winners_is_refused_in_one_line(run_copy):
    with pytest.raises(UserError, match="--top-k 3"):
        assemble(load_config(run_copy), ensemble=3, log=lambda line: None)


def test_a_single_calibrated_model_ships_with_its_temperature_folded_into_built_in_layers(members, images):
    calibrated = build_ensemble(members[:1], [("mobilenet_025", 0)], temperature=1.7, specs=BUILT_IN)
    shipped = for_export(calibrated)
    assert not any(type(layer).__name__ == "TemperatureScaling" for layer in shipped.layers)
    assert all(type(layer).__module__.startswith("keras.") for layer in shipped.layers)  # plain Keras loads it
    assert np.abs(predict(shipped, images) - predict(calibrated, images)).max() < 1e-5
    assert np.abs(predict(shipped, images) - predict(members[0], images)).max() > 1e-3  # T took effect


def _val_mean(run_dir, k):
    data = dataset.prepare(load_config(run_dir), progress=False)
    rows = data.indices("val")
    winners = json.loads((run_dir / "winners" / "summary.json").read_text())["winners"][:k]
    members = [keras.saving.load_model(run_dir / "winners" / w["dir"] / "model.keras", compile=False) for w in winners]
    return np.asarray(data.images[rows]), np.mean([predict(m, np.asarray(data.images[rows])) for m in members], axis=0)


def test_temperature_that_does_not_lower_the_cross_fitted_ece_is_left_out_and_every_record_says_so(
        run_copy, monkeypatch):
    real = calibration.cross_fitted
    # Whatever this tiny run's figures, make the scaled ECE the worse one: the final stage must then keep T = 1.
    monkeypatch.setattr(calibration, "cross_fitted",
                        lambda *args, **kw: {**real(*args, **kw), "ece_with": real(*args, **kw)["ece_without"] + 0.01})
    lines = []
    record = assemble(load_config(run_copy), ensemble=2, log=lines.append)
    check = record["calibration_check"]
    assert record["temperature"] == 1.0 and not check["applied"] and check["fitted_temperature"] != 1.0
    line = next(line for line in lines if line.startswith("temperature "))
    assert line.startswith("temperature not applied (T = 1)")
    assert f"{check['check']['ece_without']:.4f} without it, {check['check']['ece_with']:.4f} with it" in line
    saved = json.loads((run_copy / "winners" / "final" / "final.json").read_text())
    assert saved["calibration_check"]["text"] in line
    images, mean = _val_mean(run_copy, 2)
    final = keras.saving.load_model(run_copy / "winners" / "final" / "model.keras", safe_mode=True)
    assert np.abs(predict(final, images) - mean).max() < 1e-5  # the members' plain average, unscaled
    card = final_card(load_config(run_copy).layout, run_copy / "winners" / "final")["model"]
    assert card["temperature"] == 1.0 and card["temperature_applied"] is False
    assert "not temperature-scaled (T = 1" in card["what"] and ", temperature-scaled" not in card["what"]


def test_default_operating_point_beyond_the_share_is_refused_and_an_explicit_one_kept_with_a_warning(
        run_copy, monkeypatch):
    monkeypatch.setattr(operating_point, "MAX_OTHERS_CALLED", 0.0)  # this run's threshold calls some other film COVID
    lines = []
    record = assemble(load_config(run_copy), ensemble=1, log=lines.append)
    refused = record["operating_point_refused"]
    assert record["operating_point"] is None and refused["others_called"] > 0
    assert [line for line in lines if line.startswith("operating point")] == [operating_point.refused_text(refused)]
    card = final_card(load_config(run_copy).layout, run_copy / "winners" / "final")
    assert card["operating_point"] is None and card["operating_point_refused"]["how_to_ask"] == \
        "--operating-point COVID:sensitivity=0.95"
    lines = []
    record = assemble(load_config(run_copy), ensemble=1, point="COVID:sensitivity=0.95", log=lines.append)
    point = record["operating_point"]
    assert record["operating_point_refused"] is None and point["threshold"] == refused["threshold"]
    assert point["warning"]
    assert any(line.startswith("warning: operating point COVID:sensitivity=0.95") for line in lines)
    assert operating_point.cost_text(point) in next(line for line in lines if line.startswith("operating point"))


def test_the_refit_trains_each_member_on_train_and_val_for_its_best_epochs_and_never_reads_test(
        retrained_run, tmp_path, monkeypatch):
    import shutil

    from cxr_tuner.data import pipeline
    from cxr_tuner.search.engine.layout import WINNER_MODEL

    run = tmp_path / "run"
    shutil.copytree(retrained_run, run)
    config = load_config(run)
    data = dataset.prepare(config, progress=False)
    seen, make = [], pipeline.make_dataset
    monkeypatch.setattr(pipeline, "make_dataset", lambda *a, rows=None, **k: seen.append(rows) or make(*a, rows=rows, **k))
    record = assemble(config, ensemble=2, point="off", refit=True, log=lambda line: None)
    fit, test = set(data.indices(dataset.FIT).tolist()), set(data.indices("test").tolist())
    assert [set(rows.tolist()) for rows in seen] == [fit, fit]  # each member trained on all of train+val, once
    winners = json.loads(config.layout.winners_summary.read_text())["winners"]
    assert record["refit"]["epochs"] == {w["dir"]: w["best_epoch"] for w in winners}
    # The choices stay those made on validation: the same ensemble and temperature as without the refit.
    plain = assemble(config, ensemble=2, point="off", refit=False, log=lambda line: None)
    assert plain["refit"] is None and plain["temperature"] == record["temperature"]
    images = np.asarray(data.images[sorted(test)][:8])
    refit_model = keras.saving.load_model(config.layout.final / WINNER_MODEL, compile=False)
    assert not np.allclose(predict(refit_model, images), predict(keras.saving.load_model(
        config.layout.winners / winners[0]["dir"] / WINNER_MODEL, compile=False), images))
