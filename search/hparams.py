"""TensorBoard HParams: every trial a session, with Hyperband's bracket and round.

KerasTuner's own HParams logging covers only the declared search space; the
Hyperband bookkeeping values (``tuner/bracket``, ``tuner/round``, ``tuner/epochs``)
are left out, and so is the final objective. We log both.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf
import keras_tuner
from keras_tuner.src.engine import tuner_utils
from tensorboard.plugins.hparams import api as hparams_api

from hypermodels.classifier import OBJECTIVE

HYPERBAND_KEYS = ("tuner/bracket", "tuner/round", "tuner/epochs")
METRICS = (OBJECTIVE, "val_accuracy")
_DISPLAY = {OBJECTIVE: "class-weighted validation loss", "val_accuracy": "validation accuracy"}


def searched_values(values: dict) -> dict:
    """The searched hyperparameters of a trial's values, without KerasTuner's ``tuner/`` bookkeeping."""
    return {k: v for k, v in values.items() if not k.startswith("tuner/")}


def trial_hparams(trial) -> dict[str, object]:
    """Active hyperparameter values of ``trial`` plus Hyperband's bookkeeping."""
    hps = trial.hyperparameters
    values = {hp.name: hps.values[hp.name] for hp in hps.space
              if hp.name in hps.values and hps.is_active(hp)}
    values.update({k: hps.values[k] for k in HYPERBAND_KEYS if k in hps.values})
    return values


def write_trial(logdir: str | Path, trial) -> None:
    """Writes one HParams session for a finished trial under ``logdir/<trial_id>``."""
    writer = tf.summary.create_file_writer(str(Path(logdir) / trial.trial_id))
    with writer.as_default():
        hparams_api.hparams(trial_hparams(trial), trial_id=trial.trial_id)
        for name in METRICS:
            if trial.metrics.exists(name):
                # Best value over the trial's epochs, as the tuner ranks it.
                tf.summary.scalar(name, trial.metrics.get_best_value(name), step=0)
        tf.summary.scalar("status_completed", float(trial.status == "COMPLETED"), step=0)
    writer.close()


def write_experiment(logdir: str | Path, hyperparameters) -> None:
    """Writes the experiment summary: every hyperparameter's domain and the metrics.

    Rewritten at the end of each search; earlier copies are removed so the
    dashboard reads one experiment.
    """
    logdir = Path(logdir)
    for old in logdir.glob("events.out.tfevents.*"):
        old.unlink()
    domains = tuner_utils.convert_hyperparams_to_hparams(
        _unconditional(hyperparameters), hparams_api)
    hparams = list(domains) + [hparams_api.HParam(k) for k in HYPERBAND_KEYS]
    metrics = [hparams_api.Metric(m, display_name=_DISPLAY[m]) for m in METRICS]
    writer = tf.summary.create_file_writer(str(logdir))
    with writer.as_default():
        hparams_api.hparams_config(hparams=hparams, metrics=metrics)
    writer.close()


def _unconditional(hyperparameters):
    """A copy of the search space with every hyperparameter active.

    KerasTuner's converter skips inactive (conditional) hyperparameters, but the
    experiment summary must list the whole space.
    """
    config = hyperparameters.get_config()
    for entry in config["space"]:
        entry["config"]["conditions"] = []
    config["values"] = {e["config"]["name"]: e["config"].get("default") for e in config["space"]}
    return keras_tuner.HyperParameters.from_config(config)
