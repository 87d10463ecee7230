"""What the terminal shows: no start-up noise, rounded hyperparameters, a closing summary."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras_tuner
import pytest

from search import console
from search.layout import RunLayout
from search.tuner import trial_line

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("value,text", [(0.30000000000000004, "0.3"), (0.000532456789, "5.3e-04"),
                                        (0.0123456, "0.0123"), (0.0, "0"), (128, "128"),
                                        ("mobilenet_025", "mobilenet_025"), (True, "True")])
def test_values_are_printed_as_a_person_reads_them(value, text):
    assert console.value_text(value) == text


def test_trial_line_rounds_the_hyperparameters():
    hp = keras_tuner.HyperParameters()
    hp.Choice("backbone", ["mobilenet_025"])
    hp.Float("dropout", 0.0, 0.5, step=0.1)
    hp.Float("learning_rate", 1e-4, 1e-2, sampling="log")
    hp.values.update(dropout=0.30000000000000004, learning_rate=0.000532456789)
    trial = keras_tuner.engine.trial.Trial(hp, trial_id="0007")
    trial.score = 0.123456
    line = trial_line(trial)
    assert line == ("trial 0007: val_weighted_loss=0.1235  "
                    "backbone mobilenet_025, dropout 0.3, learning_rate 5.3e-04")


def test_summary_says_where_everything_is_with_the_headline_figures(exported_run):
    lines = console.summary_lines(RunLayout(exported_run))
    text = "\n".join(lines)
    metrics = json.loads((exported_run / "report" / "metrics.json").read_text())
    assert str(exported_run / "report" / "report.html") in text
    assert f"tensorboard --logdir {exported_run / 'tensorboard'}" in text
    assert "model.keras" in text and "model.tflite" in text and "saved_model" in text
    lo, hi = metrics["accuracy"]["ci95"]
    assert any(line.split()[:1] == ["accuracy"] and f"{metrics['accuracy']['value']:.3f}  [{lo:.3f}, {hi:.3f}]"
               in line for line in lines), text
    assert f"{metrics['n']} images" in text


def test_start_up_is_quiet_unless_verbose(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}

    def backbones(*flags):
        return subprocess.run([sys.executable, str(ROOT / "cli.py"), *flags, "backbones"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    quiet, verbose = backbones(), backbones("--verbose")
    assert quiet.returncode == verbose.returncode == 0
    assert quiet.stderr == "", quiet.stderr
    assert "mobilenet_025" in quiet.stdout
    assert len(verbose.stderr) > 0  # TensorFlow's own start-up lines, for who asks for them
