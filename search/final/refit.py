"""The final refit: each member of the final model trained again on train+val.

Validation chose everything about a member (its configuration, the retrain variant,
its best epoch, its seed) and then the ensemble size, temperature and threshold on
its validation probabilities; those choices stay. The refit only adds the
validation films to its training: the same configuration from the same seed, for
its best epoch's count of epochs at the learning rates it trained with then (the
lr-decay variant's schedule replayed), without early stopping, which would need
films it has not trained on. A member retrained from the search's weights starts
from them again: only its epochs after them are replayed on train+val (none when the
search's weights were its best, and the member is kept as retrained).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import keras
import keras_tuner

from cxr_tuner.search.engine import dataset, timing
from cxr_tuner.search.engine.layout import WINNER_HISTORY, WINNER_HYPERPARAMETERS, WINNER_MODEL
from cxr_tuner.search.final.retrain import ImageTraining, SearchWeights, start_from
from cxr_tuner.search.tuning.activations import trial_hypermodel
from cxr_tuner.search.tuning.tuner import fresh_keras_state


def refit_members(data: dataset.RunData, winners: list[dict], augment: bool, log: Callable[[str], None],
                  clock: timing.EpochClock) -> list[keras.Model]:
    """Whole image models of ``winners`` (summary entries) trained on train+val, in their order."""
    searched = trial_hypermodel(data, progress=False)[0]
    training = ImageTraining(data, augment) if augment else searched
    layout = data.config.layout
    models = []
    for winner in winners:
        folder = layout.winners / winner["dir"]
        hp = keras_tuner.HyperParameters.from_config(json.loads((folder / WINNER_HYPERPARAMETERS).read_text()))
        epochs = int(winner["best_epoch"])
        warm = winner.get("from") == "search"
        if warm and not epochs:
            log(f"refit {winner['dir']}: kept as retrained (the search's weights were its best: no epoch to replay)")
            models.append(keras.saving.load_model(folder / WINNER_MODEL, compile=False))
            continue
        start = SearchWeights(data.config, searched)(winner["trial_id"]) if warm else None
        rates = _learning_rates(folder, epochs)
        log(f"refit {winner['dir']} on train+val ({len(data.indices(dataset.FIT))} images): {epochs} epoch(s)"
            + (" from the search's weights" if warm else "") + f", seed {winner['best_seed']}, learning rate "
            f"{rates[0]:.1e}" + (f" -> {rates[-1]:.1e}" if rates[-1] != rates[0] else ""))
        fresh_keras_state(winner["best_seed"])
        model = training.build(hp)
        if start is not None:
            start_from(model, start)
        schedule = keras.callbacks.LearningRateScheduler(lambda epoch, rate: rates[epoch])
        training.fit(hp, model, epochs=epochs, verbose=0, fold=dataset.FIT, callbacks=[schedule, clock.callback()])
        models.append(training.image_model(hp, model))
    return models


def _learning_rates(folder: Path, epochs: int) -> list[float]:
    """The learning rate of each of the first ``epochs`` epochs of the winner's training."""
    history = json.loads((folder / WINNER_HISTORY).read_text())
    hp = json.loads((folder / WINNER_HYPERPARAMETERS).read_text())["values"]
    rates = history.get("learning_rate") or [hp["learning_rate"]] * epochs
    return [float(r) for r in rates[:epochs]]
