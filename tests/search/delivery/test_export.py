"""Export: every format answers like the model, loads safely, and the card says what it is."""

import hashlib
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from cxr_tuner.data.errors import UserError
from cxr_tuner.search.engine import dataset
from cxr_tuner.search.engine.config import load_config
from cxr_tuner.search.delivery.export import export_model, predict_exported
from cxr_tuner.search.engine.layout import RunLayout
from tests.conftest import plain_keras_output

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def test_images(exported_run):
    data = dataset.prepare(load_config(exported_run), progress=False)
    return np.asarray(data.images[data.indices("test")])


@pytest.mark.parametrize("file_name", ["model.keras", "saved_model", "model.tflite"])
def test_exports_agree_with_the_model_in_memory_on_the_test_split(exported_run, test_images, file_name):
    model = keras.saving.load_model(RunLayout(exported_run).best_winner() / "model.keras")
    expected = model.predict(test_images, verbose=0)
    got = predict_exported(RunLayout(exported_run).export / file_name, test_images)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < TOLERANCE


def test_keras_file_loads_in_safe_mode_without_custom_objects(exported_run):
    model = keras.saving.load_model(RunLayout(exported_run).export / "model.keras", safe_mode=True)
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in model.layers)


def test_keras_file_loads_with_plain_keras_in_a_process_without_this_project(exported_run, tmp_path):
    """Whoever receives model.keras needs only Keras: safe mode, no import of hypermodels."""
    got = plain_keras_output(exported_run / "export" / "model.keras", tmp_path)
    model = keras.saving.load_model(exported_run / "export" / "model.keras", safe_mode=True)
    expected = model(np.zeros((1, *model.inputs[0].shape[1:]), "uint8"))
    np.testing.assert_allclose(got["output"], np.asarray(expected), atol=1e-5)

def test_saved_model_serves_raw_uint8_images(exported_run):
    serve = tf.saved_model.load(str(RunLayout(exported_run).export / "saved_model")).signatures["serving_default"]
    (spec,) = serve.structured_input_signature[1].values()
    size = load_config(exported_run).image_size
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, size, size, 1]


def test_model_card_names_classes_input_metrics_hashes_and_versions(exported_run):
    card = json.loads((RunLayout(exported_run).export / "model_card.json").read_text())
    config = load_config(exported_run)
    assert card["class_names"] == list(config.class_names)
    assert card["input"]["dtype"] == "uint8" and card["input"]["shape"][1:] == [config.image_size] * 2 + [1]
    assert card["preprocessing"]["inside_model"] == "unit"
    assert card["metrics"]["accuracy"]["ci95"] is not None
    assert card["split_sha256"] == hashlib.sha256(RunLayout(exported_run).split.read_bytes()).hexdigest()
    files = {path: digest for group in card["files"].values() for path, digest in group.items()}
    assert {"model.keras", "model.tflite", "saved_model/saved_model.pb"} <= set(files)
    for path, digest in files.items():
        assert hashlib.sha256((RunLayout(exported_run).export / path).read_bytes()).hexdigest() == digest
    assert set(card["versions"]) == {"tensorflow", "keras", "keras_tuner"}
    assert all(v < TOLERANCE for v in card["agreement"]["max_abs_probability_difference"].values())
    assert not any(name.startswith("tuner/") for name in card["hyperparameters"])


def test_tflite_alone_leaves_no_saved_model_behind(exported_run, tmp_path):
    card = export_model(load_config(exported_run), formats=("tflite",), out=tmp_path, log=lambda line: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tflite", "model_card.json"]
    assert list(card["files"]) == ["tflite"] and list(card["agreement"]["max_abs_probability_difference"]) == ["tflite"]


def test_unknown_format_is_a_user_error(exported_run, tmp_path):
    with pytest.raises(UserError, match="onnx"):
        export_model(load_config(exported_run), formats=("keras", "onnx"), out=tmp_path)


def test_export_command_reports_the_agreement(exported_run, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from cxr_tuner.cli import cli

    def not_asked(*args, **kwargs):
        raise AssertionError("a format the user did not ask for was computed")

    # Only the .keras file is asked for: no SavedModel is traced and nothing is converted to TFLite.
    monkeypatch.setattr(keras.Model, "export", not_asked)
    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_saved_model", not_asked)
    result = CliRunner().invoke(cli, ["export", str(exported_run), "--format", "keras", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "keras: largest probability difference" in result.output and (tmp_path / "model.keras").is_file()


def test_export_keeps_native_notices_off_the_default_output(run_copy, tmp_path):
    """TensorFlow Lite's XNNPACK line (and, on GPU-less machines with CUDA libraries, cuInit's) only with --verbose."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}

    def export(*flags):
        done = subprocess.run([sys.executable, "-m", "cxr_tuner.cli", "export", str(run_copy), "--format", "tflite",
                               "--out", str(tmp_path / "out"), *flags], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout + done.stderr

    quiet = export()
    assert "exported tflite" in quiet
    assert "XNNPACK" not in quiet and "cuInit" not in quiet, quiet
    assert "XNNPACK" in export("--verbose")  # the line is there to hide: --verbose after the command shows it


def test_evaluate_and_export_floors_say_what_they_count(exported_run):
    """Evaluate's floor is the final model's pass over the test films and one per stress family; export's
    is that test pass alone (what the floor of both was before the stress test), not the larger sum."""
    stages = json.loads((exported_run / "summary.json").read_text())["stages"]
    floor = stages["evaluate"]["floor"]
    assert "8 stress-test re-renderings" in floor["what"] and 0 < floor["test_pass"]["seconds"] < floor["seconds"]
    assert stages["export"]["floor"] == floor["test_pass"]
