"""TensorBoard HParams: every trial a session, with Hyperband's bracket and round.

KerasTuner's own HParams logging covers only the declared search space; the
Hyperband bookkeeping values (``tuner/bracket``, ``tuner/round``, ``tuner/epochs``)
are left out, and so is the final objective. We log both, and name the five
hyperparameters the search is about so that the dashboard shows them first (`column`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
import keras_tuner
from tensorboard.plugins.hparams import api as hparams_api

from cxr_tuner.hypermodels.classifier import OBJECTIVE
from cxr_tuner.hypermodels.compat import keras_tuner_compat
from cxr_tuner.search.engine.task import task_of

HYPERBAND_KEYS = ("tuner/bracket", "tuner/round", "tuner/epochs")
METRICS = (OBJECTIVE, "val_accuracy")
FIRST_COLUMNS = ("backbone", "unfreeze_depth", "learning_rate", "dropout", "head_depth")
"""The hyperparameters the search is about, in the order HParams shows them first (it shows five until one ticks more)."""


def column(name: str) -> str:
    """The HParams name of hyperparameter ``name``, in the sessions and the experiment alike.

    TensorBoard orders the experiment's hyperparameters by name, whatever order it lists
    them in, and shows the first five: each of ``FIRST_COLUMNS`` is named with its rank
    (``1_backbone`` .. ``5_head_depth``), which sorts before every other name. The table
    heads each column with the plain name (its ``display_name``).
    """
    return f"{FIRST_COLUMNS.index(name) + 1}_{name}" if name in FIRST_COLUMNS else name


def hyperparameter(column_name: str) -> str:
    """The hyperparameter an HParams name stands for: the inverse of `column`."""
    rank, _, name = column_name.partition("_")
    return name if rank.isdigit() and column(name) == column_name else column_name


def run_metrics(config) -> dict[str, str]:
    """The metrics HParams shows for ``config``'s run, the objective first: ``{name: display name}``."""
    return task_of(config).run_metrics(config)


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


def fold_metric(fold: int, objective: str = OBJECTIVE) -> str:
    """The name of fold ``fold``'s (from 0) score among a ``--folds`` trial's metrics."""
    return f"fold_{fold + 1}_{objective}"


def fold_epoch(fold: int) -> str:
    """The name of fold ``fold``'s best epoch (counted from 1) among a ``--folds`` trial's metrics."""
    return f"fold_{fold + 1}_best_epoch"


def fold_score(history, metrics=METRICS) -> dict:
    """A fold model's best epoch (counted from 1, across Hyperband's rounds) and its ``metrics`` there (objective first)."""
    losses = np.asarray(history.history[metrics[0]], dtype=float)
    best = int(np.nanargmin(losses))
    return {**{name: float(history.history[name][best]) for name in metrics if name in history.history},
            "best_epoch": int(history.epoch[best]) + 1}


def fold_metrics(scores: list[dict], metrics=METRICS) -> dict:
    """What a ``--folds`` trial reports to KerasTuner: the folds' means (the objective's is its score) and each fold's."""
    objective = metrics[0]
    found = {name: float(np.mean([s[name] for s in scores])) for name in metrics if all(name in s for s in scores)}
    for fold, score in enumerate(scores):
        found[fold_metric(fold, objective)] = score[objective]
        found[fold_epoch(fold)] = score["best_epoch"]
    return found


def fold_epochs(trial_metrics: dict, folds: int) -> list[int]:
    """Each fold's best epoch, from a ``--folds`` trial's saved metrics (``trial.json``'s ``metrics``)."""
    found = [trial_metrics.get(fold_epoch(f), {}).get("observations") for f in range(folds)]
    return [int(round(obs[-1]["value"][0])) for obs in found if obs]


def write_trial(logdir: str | Path, trial, metrics=METRICS) -> None:
    """Writes one HParams session for a finished trial under ``logdir/<trial_id>`` (with ``--folds``, each fold's score too).

    Its hyperparameters are named by `column`, as the experiment names them.

    ``metrics``: the run's (`run_metrics`), objective first.
    """
    writer = tf.summary.create_file_writer(str(Path(logdir) / trial.trial_id))
    folds = sorted(name for name in trial.metrics.metrics if name.startswith("fold_") and name.endswith(metrics[0]))
    with writer.as_default():
        hparams_api.hparams({column(k): v for k, v in trial_hparams(trial).items()}, trial_id=trial.trial_id)
        for name in (*metrics, *folds):
            if trial.metrics.exists(name):
                # Best value over the trial's epochs, as the tuner ranks it.
                tf.summary.scalar(name, trial.metrics.get_best_value(name), step=0)
        tf.summary.scalar("status_completed", float(trial.status == "COMPLETED"), step=0)
    writer.close()


def write_experiment(logdir: str | Path, hyperparameters, folds: int | None, metrics: dict) -> None:
    """Writes the experiment summary: every hyperparameter's domain (named by `column`, shown by its own name) and the
    metrics (each fold's with ``folds``).

    Rewritten at the end of each search; earlier copies are removed so the
    dashboard reads one experiment.
    """
    logdir = Path(logdir)
    for old in logdir.glob("events.out.tfevents.*"):
        old.unlink()
    domains = keras_tuner_compat.hparams_domains(_unconditional(hyperparameters), hparams_api)
    hparams = [hparams_api.HParam(column(d.name), d.domain, display_name=d.name) for d in domains]
    hparams += [hparams_api.HParam(k, display_name=k) for k in HYPERBAND_KEYS]
    objective = next(iter(metrics))
    listed = [hparams_api.Metric(m, display_name=display) for m, display in metrics.items()]
    listed += [hparams_api.Metric(fold_metric(f, objective), display_name=f"fold {f + 1} {metrics[objective]}")
               for f in range(folds or 0)]
    writer = tf.summary.create_file_writer(str(logdir))
    with writer.as_default():
        hparams_api.hparams_config(hparams=hparams, metrics=listed)
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
