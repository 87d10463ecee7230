"""--precision: a mixed-bfloat16 run trains in bfloat16, keeps softmax and loss in float32,
ships a float32 model that answers like the trained one, and keys its caches by precision."""

import json

import keras
import numpy as np
import pytest
from tensorflow.python.framework import config as tf_config

from cxr_tuner.hypermodels import precision
from cxr_tuner.search.engine import dataset
from cxr_tuner.search.tuning import tuner
from cxr_tuner.search.tuning.activations import ActivationCache, trial_hypermodel
from cxr_tuner.search.engine.config import load_config, new_config
from cxr_tuner.search.delivery.export import export_model, predict_exported
from cxr_tuner.search.engine.layout import RunLayout
from cxr_tuner.search.final.retrain import retrain
from cxr_tuner.search.run import run_search
from tests.conftest import FAST_SEARCH, run_cli
from tests.search.conftest import _quiet

BF16 = "mixed_bfloat16"
# bfloat16 keeps 8 significant bits: each layer's output is rounded by up to 2^-8 (0.4 %)
# of its value, and the rounding of a dozen layers moves a probability by a few hundredths.
TRAINED_TOLERANCE = 0.05
FORMAT_TOLERANCE = 1e-4  # between the float32 files: summation order only, as tests/search/test_export.py


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory, demo_data):
    """A mobilenet_025 (shipped ImageNet weights) run at 32 px in mixed bfloat16: searched, retrained, exported."""
    run_dir = tmp_path_factory.mktemp("bf16") / "run"
    config = new_config(str(run_dir), str(demo_data), backbones=("mobilenet_025",), image_size=32,
                        max_epochs=1, factor=2, batch_size=16, seed=3, precision=BF16)
    run_search(config, log=_quiet)
    retrain(load_config(run_dir), top_k=1, max_epochs=1, choose_variant=False, log=_quiet)
    export_model(load_config(run_dir), log=_quiet)
    return run_dir


@pytest.fixture(scope="module")
def test_images(bf16_run):
    data = dataset.prepare(load_config(bf16_run), progress=False)
    return np.asarray(data.images[data.indices("test")])


def test_the_winner_trains_in_bfloat16_with_a_float32_softmax(bf16_run):
    assert load_config(bf16_run).precision == BF16
    model = keras.saving.load_model(RunLayout(bf16_run).best_winner() / "model.keras")
    assert precision.policy_of(model) == BF16
    assert model.get_layer("predictions").dtype_policy.name == "float32"
    assert model.output.dtype == "float32"


@pytest.mark.parametrize("file_name", ["model.keras", "saved_model", "model.tflite"])
def test_export_outputs_float32_that_agrees_with_the_bfloat16_model(bf16_run, test_images, file_name):
    trained = keras.saving.load_model(RunLayout(bf16_run).best_winner() / "model.keras")
    expected = keras.ops.convert_to_numpy(trained(test_images, training=False))
    got = predict_exported(RunLayout(bf16_run).export / file_name, test_images)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert np.abs(got - expected).max() < TRAINED_TOLERANCE
    shipped = keras.saving.load_model(RunLayout(bf16_run).export / "model.keras", safe_mode=True)
    assert precision.policy_of(shipped) == "float32"
    float32 = keras.ops.convert_to_numpy(shipped(test_images, training=False))
    assert np.abs(got - float32).max() < FORMAT_TOLERANCE


def test_model_card_says_what_it_trained_and_ships_in(bf16_run):
    card = json.loads((RunLayout(bf16_run).export / "model_card.json").read_text())
    assert card["precision"]["trained"] == BF16 and card["precision"]["exported"] == "float32"
    assert 0 < card["precision"]["max_abs_probability_difference_to_trained"] < TRAINED_TOLERANCE
    assert all(v < FORMAT_TOLERANCE for v in card["agreement"]["max_abs_probability_difference"].values())


def test_a_float32_activation_cache_is_not_reused_in_bfloat16(bf16_run, tmp_path, monkeypatch):
    data = dataset.prepare(load_config(bf16_run), progress=False)
    bf16 = trial_hypermodel(data, progress=False)[1]
    float32 = ActivationCache(bf16.classifier.__class__(3, 32, ("mobilenet_025",), "imagenet", "float32"),
                              data.images, tmp_path, progress=False)
    made = float32.activations("mobilenet_025", 0)
    # The bfloat16 search's entry in the same folder: another entry, computed in bfloat16.
    bf16.folder = tmp_path
    assert bf16.entry("mobilenet_025") != float32.entry("mobilenet_025")
    assert bf16.entry("mobilenet_025").name.endswith(BF16)
    rounded = bf16.activations("mobilenet_025", 0)
    assert json.loads((bf16.entry("mobilenet_025") / "head_pool.json").read_text())["precision"] == BF16
    assert not np.array_equal(rounded, made)
    # The same backbone's features, rounded: a few near ReLU6's kinks move, the whole hardly.
    assert np.corrcoef(rounded.ravel(), made.ravel())[0, 1] > 0.99


def test_auto_resolves_to_a_policy_in_config_json_and_trials_run_with_op_determinism(
        tmp_path, demo_data, monkeypatch):
    seen = []
    real = tuner.fresh_keras_state
    monkeypatch.setattr(tuner, "fresh_keras_state",
                        lambda seed: seen.append(tf_config.is_op_determinism_enabled()) or real(seed))
    before = tf_config.is_op_determinism_enabled()
    run_dir = tmp_path / "run"
    result = run_cli("search", "--data", demo_data, "--run-dir", run_dir, *FAST_SEARCH, "--precision", "auto")
    assert result.exit_code == 0, result.output
    resolved = json.loads(RunLayout(run_dir).config.read_text())["precision"]
    assert resolved == precision.resolve("auto") and resolved in ("float32", "mixed_float16", BF16)
    assert f"; precision {resolved}" in result.output.splitlines()[0]
    assert seen and all(seen)  # every trial
    assert tf_config.is_op_determinism_enabled() == before  # and the process as it was
