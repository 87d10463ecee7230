"""Faults during a search: a killed process, a trial that diverges or does not build.

The kill test runs the real command line in a subprocess, SIGKILLs it while a trial
is training, and runs the same command again. KerasTuner writes each trial's
``trial.json`` (RUNNING at creation, COMPLETED/FAILED at its end) and ``oracle.json``
(which trials are ongoing, Hyperband's brackets, the sampler's seed state) as it goes;
on reload its oracle puts the trials that were ongoing into its retry queue, so the
interrupted trial runs again under the same id with the same hyperparameters, and the
finished ones are kept as they were.
"""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import keras_tuner
import numpy as np
import pytest
from click.testing import CliRunner

from cxr_tuner.cli import cli
from cxr_tuner.data import synthetic
from cxr_tuner.search.engine.layout import RunLayout
from cxr_tuner.search.engine.config import new_config
from cxr_tuner.search.tuning import tuner as tuner_module
from cxr_tuner.search.tuning.tuner import make_tuner
from tests.conftest import saved_trials

REPO = Path(__file__).resolve().parents[2]
# Hyperband with max_epochs 2 and factor 2: two brackets, five trials.
FLAGS = ("--backbones", "vanilla_cnn", "--weights", "none", "--image-size", "32",
         "--max-epochs", "2", "--factor", "2", "--seed", "4", "--no-retrain")
_KILL_TIMEOUT_SECONDS = 600


def _summary(trials: dict) -> dict:
    return {tid: (t["status"], t["score"], t["hyperparameters"]["values"]) for tid, t in trials.items()}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults") / "data"
    synthetic.write_demo_dataset(root, n_per_class=12, size=64, seed=5)
    (root / "metadata.csv").unlink()  # folder layout: every image its own group
    return root


@pytest.fixture(scope="module")
def uninterrupted(phantoms, tmp_path_factory):
    """The search run once without interruption (in-process)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = CliRunner().invoke(cli, ["search", "--data", str(phantoms), "--run-dir", str(run_dir), *FLAGS])
    assert result.exit_code == 0, result.output
    return run_dir


def _training(run_dir: Path, trial_id: str) -> bool:
    """True once the trial's fit has started (its TensorBoard curves writer exists)."""
    return (RunLayout(run_dir).tensorboard / trial_id.replace("trial_", "")).is_dir()


@pytest.fixture(scope="module")
def killed_then_resumed(phantoms, tmp_path_factory):
    """(run dir, trials at the kill, the killed trial's id, the resumed command's result)."""
    run_dir = tmp_path_factory.mktemp("killed") / "run"
    command = [sys.executable, str(REPO / "cli.py"), "search", "--data", str(phantoms),
               "--run-dir", str(run_dir), *FLAGS]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, at_kill, killed_id = time.monotonic() + _KILL_TIMEOUT_SECONDS, None, None
    try:
        while process.poll() is None and time.monotonic() < deadline:
            trials = saved_trials(run_dir)
            running = [tid for tid, t in trials.items() if t["status"] == "RUNNING"]
            done = [t for t in trials.values() if t["status"] == "COMPLETED"]
            if done and running and _training(run_dir, running[0]):
                process.send_signal(signal.SIGKILL)
                at_kill, killed_id = trials, running[0]
                break
            time.sleep(0.05)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL and at_kill, "the search ended before it could be killed"
    resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=_KILL_TIMEOUT_SECONDS)
    return run_dir, at_kill, killed_id, resumed


def test_killed_search_resumes_keeps_finished_trials_and_completes(killed_then_resumed):
    run_dir, at_kill, killed_id, resumed = killed_then_resumed
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stderr
    assert "best trial" in resumed.stdout
    after = _summary(saved_trials(run_dir))
    finished_before = {tid: s for tid, s in _summary(at_kill).items() if s[0] == "COMPLETED"}
    assert finished_before and all(after[tid] == s for tid, s in finished_before.items())
    # The interrupted trial ran again under its id with its hyperparameters, and finished.
    assert after[killed_id][0] == "COMPLETED"
    assert after[killed_id][2] == at_kill[killed_id]["hyperparameters"]["values"]
    assert {status for status, _, _ in after.values()} == {"COMPLETED"}
    best = json.loads(RunLayout(run_dir).best.read_text())
    assert best["trials"] == len(after) == 5


def test_resumed_search_ran_the_trials_of_an_uninterrupted_one(killed_then_resumed, uninterrupted):
    run_dir = killed_then_resumed[0]
    values = {tid: s[2] for tid, s in _summary(saved_trials(run_dir)).items()}
    assert values == {tid: s[2] for tid, s in _summary(saved_trials(uninterrupted)).items()}


def test_same_seed_and_data_give_the_same_split_and_first_trials(killed_then_resumed, uninterrupted):
    # Two fresh runs of the same command (one of them later killed and resumed).
    run_dir = killed_then_resumed[0]
    assert RunLayout(run_dir).split.read_bytes() == RunLayout(uninterrupted).split.read_bytes()
    first = sorted(saved_trials(run_dir))[:3]
    assert [saved_trials(run_dir)[t]["hyperparameters"]["values"] for t in first] == \
        [saved_trials(uninterrupted)[t]["hyperparameters"]["values"] for t in first]


# --- a trial that diverges or does not build -----------------------------------------------

class _Scripted(keras_tuner.HyperModel):
    """A tiny classifier whose successive builds follow ``plan``: ok, nan or broken."""

    def __init__(self):
        super().__init__()
        self.plan = []

    def build(self, hp):
        rate = hp.Float("learning_rate", 1e-3, 1e-2, sampling="log")
        step = self.plan.pop(0) if self.plan else "ok"
        if step == "broken":
            raise ValueError("head_units must be positive, got -1")
        inputs = keras.Input((4,))
        outputs = keras.layers.Dense(2, activation="softmax")(inputs)
        model = keras.Model(inputs, outputs)
        # A learning rate of 1e38 overflows the weights on the first step: the model diverges.
        optimizer = keras.optimizers.SGD(1e38 if step == "nan" else rate)
        model.compile(optimizer, "categorical_crossentropy",
                      metrics=[keras.metrics.CategoricalCrossentropy(name="weighted_loss")])
        return model


def test_nan_loss_and_failed_build_are_failed_trials_and_the_search_goes_on(tmp_path, capsys):
    config = new_config(str(tmp_path / "run"), "unused", tuner="random", max_trials=4,
                        max_epochs=1, weights="none", backbones=("vanilla_cnn",), seed=0)
    hypermodel = _Scripted()
    tuner = make_tuner(config, hypermodel)
    hypermodel.plan = ["ok", "nan", "broken", "ok"]  # after the tuner's own space-probing build
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 4)).astype("float32"), np.eye(2, dtype="float32")[rng.integers(0, 2, 32)]
    tuner.search(x, y, validation_data=(x, y), epochs=1, verbose=0)

    trials = [tuner.oracle.trials[tid] for tid in sorted(tuner.oracle.trials)]
    assert [t.status for t in trials] == ["COMPLETED", "FAILED", "FAILED", "COMPLETED"]
    assert re.search(r"loss became (nan|inf) at epoch 1", trials[1].message)
    assert "head_units must be positive" in trials[2].message
    assert trials[0].score is not None and trials[3].score is not None
    saved = saved_trials(tmp_path / "run")  # the reasons are on disk, for a resumed run too
    assert saved[trials[1].trial_id]["status"] == "FAILED" and "loss became" in saved[trials[1].trial_id]["message"]
    printed = capsys.readouterr().out
    assert "trial 1: failed:" in printed and "trial 2: failed:" in printed


def test_trials_failing_in_a_row_stop_with_one_line_and_a_resumable_run(phantoms, tmp_path, monkeypatch):
    def diverged(self, epoch, logs=None):
        raise keras_tuner.errors.FailedTrialError(f"loss became nan at epoch {epoch + 1}")

    monkeypatch.setattr(tuner_module._NanGuard, "on_epoch_end", diverged)
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(cli, ["search", "--data", str(phantoms), "--run-dir", str(run_dir), *FLAGS])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "consecutive failures exceeded the limit of 3" in errors[0]
    assert "loss became nan at epoch 1" in errors[0] and "run the same command to resume" in errors[0]
    failed = [t for t in saved_trials(run_dir).values() if t["status"] == "FAILED"]
    assert len(failed) >= 2 and all("loss became nan" in t["message"] for t in failed)
