"""Retrain the search's best configurations and rank them on validation.

By default (``from_="scratch"``) each winner trains again from a fresh build. With
``from_="search"`` it starts from what the search trained: its trial's best-epoch
weights (KerasTuner's checkpoint of its last Hyperband round), with a fresh optimizer,
and trains on only while validation improves on them (early stopping measured from the
starting weights, whose validation loss is the search's score): about 3x fewer epochs,
measured no better calibrated (docs/final-model.md). The test split is not read.

With augmentation, winners train on images (every epoch sees other pixels). Without
it, the frozen part of a pretrained backbone sees the same images every epoch, so
winners train, as the search's trials do, only above the freeze boundary on the
cached activations, and the trained values go into the whole image model: the same
model as training on images gives (only float summation order differs), several
times faster.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Callable

import keras
import keras_tuner
import numpy as np

from cxr_tuner.data import files
from cxr_tuner.data.errors import UserError
from cxr_tuner.hypermodels.classifier import OBJECTIVE, XrayClassifier
from cxr_tuner.search.engine import console, dataset, timing
from cxr_tuner.search.tuning import hparams
from cxr_tuner.hypermodels import variants
from cxr_tuner.search.engine.config import RETRAIN_FROM, RETRAIN_FROM_DEFAULT, RunConfig
from cxr_tuner.search.engine.devices import deterministic_ops
from cxr_tuner.search.engine.layout import (SPLIT_STAMP, WINNER_HISTORY, WINNER_HYPERPARAMETERS, WINNER_MODEL, WINNER_OUT_OF_FOLD,
                           WINNER_VALIDATION)
from cxr_tuner.search.tuning.activations import trial_hypermodel
from cxr_tuner.search.engine.lock import run_lock
from cxr_tuner.search.tuning.tuner import Restart, fresh_keras_state
from cxr_tuner.search.figures.text import number_text
from cxr_tuner.search.engine.task import task_of

PATIENCE = 3
_SCORE = "score.json"  # the best seed's score so far, while a winner trains


def trial_hyperparameters(config: RunConfig, trial_id: str) -> keras_tuner.HyperParameters:
    """The search space and values of one tuner trial, read from its ``trial.json``."""
    path = config.layout.trial(trial_id)
    remedy = f"run `cxr-tuner search --run-dir {config.run_dir}` to resume the search"
    try:
        return keras_tuner.HyperParameters.from_config(files.read_json(path, remedy)["hyperparameters"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path} is damaged (no readable hyperparameters); {remedy}.") from None


def build_model(config: RunConfig, hp: keras_tuner.HyperParameters) -> keras.Model:
    """A fresh, compiled model of the run's HyperModel for ``hp``."""
    hypermodel = XrayClassifier(len(config.class_names), config.image_size, config.backbones, config.weights,
                                config.precision, config.search_space(), findings=task_of(config).findings(config),
                                specs=config.backbone_specs, intensity=config.intensity)
    return hypermodel.build(hp)


def retrain(config: RunConfig, top_k: int | None = None, seeds: int | None = None, max_epochs: int | None = None,
            augment: bool = False, choose_variant: bool = True, log: Callable[[str], None] = print,
            from_: str = RETRAIN_FROM_DEFAULT, stop_at: float | None = None, extra_seeds: int = 0) -> dict:
    """Retrains the ``top_k`` best distinct configurations and writes ``winners/``.

    Each configuration trains ``seeds`` times (seeds ``config.seed + i``) on the
    train split with early stopping on ``val_weighted_loss``, keeping the best
    epoch's weights. Configurations are ranked by their mean over seeds; the best
    seed's model is saved as ``winners/<rank>-<trial_id>/model.keras`` with its
    ``history.json`` and ``hyperparameters.json``. With ``choose_variant`` every
    configuration is retrained the way (:mod:`hypermodels.variants`) that gave the rank-1
    configuration the lowest validation loss on the cached activations. Augmentation
    (on images, minutes instead of seconds) is off by default: see docs/final-model.md.

    ``top_k`` and ``seeds`` default to the run's space (``[retrain]``: 3 and 1), whose
    ``variants`` are the ways tried. ``from_``: ``"search"`` starts every training (each
    variant, each seed) from the winner's search weights (:class:`SearchWeights`),
    ``"scratch"`` from a fresh build; ``--folds`` always trains from scratch. ``stop_at``
    (``time.monotonic()``, a ``--time-budget``'s): no epoch is begun that would end after it, and
    no fit after the first once it has passed (fewer seeds, fewer winners; each fit keeps its best epoch);
    up to ``extra_seeds`` more seeds per winner train while it leaves time for them and for one
    fit of each winner after (at the last fit's duration).

    Returns:
        The content of ``winners/summary.json``.
    """
    if from_ not in RETRAIN_FROM:
        raise UserError(f"--retrain-from {from_}: choose from {', '.join(RETRAIN_FROM)}.")
    top_k = top_k or config.retrain_choices["top_k"]
    seeds = seeds or config.retrain_choices["seeds"]
    with run_lock(config.run_dir, "retrain", log), deterministic_ops():
        started, clock = time.perf_counter(), timing.EpochClock()
        summary = _retrain(config, top_k, seeds, max_epochs, augment, choose_variant, log, clock, from_,
                           _Deadline(stop_at, extra_seeds))
        timing.record(config.layout, "retrain", time.perf_counter() - started, clock.floor())
        return summary


def _retrain(config: RunConfig, top_k: int, seeds: int, max_epochs: int | None, augment: bool,
             choose_variant: bool, log, clock: timing.EpochClock, from_: str, deadline: _Deadline) -> dict:
    top = _top_trials(config)[:top_k]
    # config.json always saves overwrite=False, so this reads the split the search saved.
    data = dataset.prepare(config, progress=False)
    config, objective = data.config, data.task.objective
    # Without augmentation the search's hypermodel builds, fits (on cached activations)
    # and gives back the whole image model, as ImageTraining does on images.
    training = ImageTraining(data, augment) if augment else trial_hypermodel(data)[0]
    winners_dir = config.layout.winners
    shutil.rmtree(winners_dir, ignore_errors=True)
    if config.folds:
        if from_ == "search":
            log("retrain with --folds: from scratch (a warm start from the folds' checkpoints is not built)")
        return _retrain_on_folds(config, data, training, top, seeds, augment, log, clock)
    epochs = max_epochs or config.max_epochs * 2
    val_rows = data.indices("val")
    allowed = config.retrain_choices["variants"]
    variant, tried, reused = variants.first(allowed), {}, {}
    # The search's hypermodel (on cached activations), for the variant choice and the search's weights.
    cached = training if not augment else (trial_hypermodel(data)[0] if choose_variant or from_ == "search" else None)
    searched = SearchWeights(config, cached) if from_ == "search" else None
    last_fit = [None]  # seconds of the last fit, which the deadline's extra seeds are judged by
    log("retrain from " + ("the search's best-epoch weights, fresh optimizer, on while validation improves"
                           if searched else "scratch (fresh builds)"))
    if choose_variant:
        # Without augmentation the variants train exactly as the retrain does, so the
        # chosen one's fit of the rank-1 configuration (seed config.seed) is kept, not redone.
        fits = {}

        def fit(hp, callbacks):
            staging = winners_dir / f"variant_{len(fits)}"
            start, began = searched(top[0]["trial_id"]) if searched else None, time.monotonic()
            fits[staging] = _fit_and_keep(cached, hp, config.seed, epochs, staging,
                                          lambda: [*callbacks, *deadline.callbacks()], clock=clock,
                                          rows=val_rows, objective=objective, start=start)
            last_fit[0] = time.monotonic() - began
            return fits[staging][OBJECTIVE]

        top_hp = trial_hyperparameters(config, top[0]["trial_id"])
        variant, tried = pick_variant(fit, top_hp, config.weights, log, allowed, objective,
                                      specs=config.backbone_specs)
        chosen = variants.candidates(top_hp, config.weights, allowed, specs=config.backbone_specs).index(variant)
        for i, (staging, score) in enumerate(fits.items()):  # fits ran in the candidates' order
            if i == chosen and not augment:
                staging.rename(winners_dir / f"trial_{top[0]['trial_id']}")
                reused = score
            else:
                shutil.rmtree(staging, ignore_errors=True)
    results = []
    for rank, entry in enumerate(top, 1):
        if rank > 1 and deadline.passed():
            log(f"retrain: the time budget's deadline for it has passed; {len(top) - rank + 1} of {len(top)} winners "
                "not retrained")
            break
        hp = trial_hyperparameters(config, entry["trial_id"])
        if variant in variants.candidates(hp, config.weights, allowed, specs=config.backbone_specs):  # else no block left to unfreeze
            hp = variant.hyperparameters(hp)
        staging = winners_dir / f"trial_{entry['trial_id']}"
        log(f"retrain {rank}/{len(top)}: trial {entry['trial_id']} ({console.hyperparameter_text(entry['hyperparameters'])})")
        kept = [reused] if reused and entry is top[0] else []
        start = searched(entry["trial_id"]) if searched and len(kept) < seeds + deadline.extra else None
        scores = kept
        for i in range(len(kept), seeds + deadline.extra):
            if i >= seeds and not deadline.leaves(last_fit[0], len(top) - rank):
                break
            if scores and deadline.passed():
                log(f"  the time budget's deadline has passed: {seeds - i} of {seeds} seeds not trained")
                break
            callbacks = lambda: [*variant.callbacks(objective), *deadline.callbacks()]  # noqa: E731
            began = time.monotonic()
            scores = scores + [_fit_and_keep(training, hp, config.seed + i, epochs, staging, callbacks, None, clock,
                                             rows=val_rows, objective=objective, start=start)]
            last_fit[0] = time.monotonic() - began
        for score in scores:  # one line per training, the one reused from the variant choice too
            begun = (f" (epoch 0: the search's weights, {objective} {number_text(score['start_' + OBJECTIVE], '.4f')})"
                     if "start_" + OBJECTIVE in score else "")
            log(f"  seed {score['seed']}: best epoch {score['best_epoch']} of {score['epochs_run']}{begun}, "
                f"{objective} {number_text(score[OBJECTIVE], '.4f')}")
        results.append({**_result(entry, scores, objective), "from": from_})
        log(f"retrained trial {entry['trial_id']}: {objective} {_mean_std_text(results[-1])}")
    return _rank_and_save(config, results, augment, epochs, {"chosen": variant.name, "tried": tried}, from_)


def _retrain_on_folds(config: RunConfig, data: dataset.RunData, training, top: list[dict], seeds: int,
                      augment: bool, log, clock: timing.EpochClock) -> dict:
    """``--folds``: each winner trains on all of train+val for the epochs its folds chose, no early stopping.

    Validation is trained on, so nothing is chosen on it: each seed also trains one
    model per fold the same way on the fold's training rows, and their predictions on
    the rows they did not see (out of fold, every train+val row once) rank the
    winners and are saved for the final stage's ensemble, temperature and threshold.
    The retrain variants need a validation split, so winners train as searched.
    """
    rows = data.indices(dataset.FIT)
    position = {row: i for i, row in enumerate(rows)}
    log(f"retrain with --folds {config.folds}: on train+val ({len(rows)} images), as searched; ranked on "
        "out-of-fold predictions")
    results = []
    for rank, entry in enumerate(top, 1):
        hp = trial_hyperparameters(config, entry["trial_id"])
        epochs = _fold_epochs(config, entry["trial_id"])
        staging = config.layout.winners / f"trial_{entry['trial_id']}"
        log(f"retrain {rank}/{len(top)}: trial {entry['trial_id']} for {epochs} epoch(s), the mean of its folds' "
            f"best ({console.hyperparameter_text(entry['hyperparameters'])})")
        scores = []
        for seed in range(config.seed, config.seed + seeds):
            # One model per seed for its K folds and its fit on all of train+val: traced once,
            # put back to its initial state (a fresh build's with this seed) before each fit.
            fresh_keras_state(seed)
            model = training.build(hp)
            start = Restart(model)
            out_of_fold = np.zeros((len(rows), len(config.class_names)))
            for fold, (_, held_out) in enumerate(data.folds()):
                _fit_fixed(training, hp, model, start, epochs, fold, clock)
                out_of_fold[[position[r] for r in held_out]] = training.predict_validation(hp, model, fold)
            loss = data.objective_value(rows, out_of_fold)
            score = {"seed": seed, OBJECTIVE: loss, "best_epoch": epochs, "epochs_run": epochs,
                     "val_accuracy": _accuracy(data.labels[rows], out_of_fold)}
            scores.append(score)
            saved = staging / _SCORE
            if not saved.is_file() or loss < json.loads(saved.read_text())[OBJECTIVE]:
                _fit_fixed(training, hp, model, start, epochs, dataset.FIT, clock)
                staging.mkdir(parents=True, exist_ok=True)
                training.image_model(hp, model).save(staging / WINNER_MODEL)
                files.write_json(staging / WINNER_HISTORY, {k: [float(v) for v in values]
                                                             for k, values in model.history.history.items()})
                files.write_json(staging / WINNER_HYPERPARAMETERS, hp.get_config())
                files.write_npz(staging / WINNER_OUT_OF_FOLD, rows=rows, probabilities=out_of_fold)
                files.write_json(saved, score)
        results.append({**_result(entry, scores, task_of(config).objective), "from": "scratch"})
        log(f"retrained trial {entry['trial_id']}: out-of-fold {task_of(config).objective} {_mean_std_text(results[-1])}")
    summary = _rank_and_save(config, results, augment, None, {"chosen": variants.AS_SEARCHED.name, "tried": {}},
                             "scratch")
    return summary


def _fold_epochs(config: RunConfig, trial_id: str) -> int:
    """The rounded mean of the best epochs of a ``--folds`` trial's fold models (saved in its ``trial.json``)."""
    path = config.layout.trial(trial_id)
    saved = files.read_json(path, f"run `cxr-tuner search --run-dir {config.run_dir}` to resume the search")
    found = hparams.fold_epochs(saved.get("metrics", {}).get("metrics", {}), config.folds)
    if len(found) != config.folds:
        raise UserError(f"{path} has the best epochs of {len(found)} of {config.folds} folds; it was not made "
                        f"with --folds {config.folds}. Start over with --overwrite and the run's flags.")
    return max(1, int(np.round(np.mean(found))))


def _fit_fixed(training, hp, model: keras.Model, start: Restart, epochs: int, fold, clock: timing.EpochClock) -> None:
    """``model`` from its initial state, ``epochs`` epochs on a fold's training rows (``dataset.FIT``:
    train+val), no early stopping."""
    start.reset()
    training.fit(hp, model, epochs=epochs, verbose=0, fold=fold, callbacks=[clock.callback()])


def _top_trials(config: RunConfig) -> list[dict]:
    path = config.layout.best
    remedy = f"run `cxr-tuner search --run-dir {config.run_dir}` (it resumes)"
    top = config.layout.read_current(path, remedy).get("top")
    if not isinstance(top, list):
        raise UserError(f"{path} is damaged (no list of top trials); {remedy}.")
    if not top:
        raise UserError(f"No trial of the search in {config.run_dir} completed; nothing to retrain.")
    return top


class ImageTraining:
    """Winners train whole image models on images (needed for augmentation)."""

    def __init__(self, data: dataset.RunData, augment: bool):
        self.data, self.augment = data, augment
        self._datasets = None

    def build(self, hp):
        return build_model(self.data.config, hp)

    def fit(self, hp, model, fold=None, **kwargs):
        if fold is not None:  # --folds: a fold's rows, or all of train+val without validation
            data = self.data
            train_rows, val_rows = (dataset.FIT, None) if fold == dataset.FIT else data.folds()[fold]
            train = data.dataset(train_rows, shuffle=True, augment=self.augment)
            val = None if val_rows is None else data.dataset(val_rows)
            return model.fit(train, validation_data=val, **kwargs)
        # Made on first use, after the seed is set, as the cached activations' datasets
        # are: tf.data's shuffle order also depends on the global seed at creation.
        if self._datasets is None:
            self._datasets = (self.data.dataset("train", shuffle=True, augment=self.augment),
                              self.data.dataset("val"))
        train, val = self._datasets
        return model.fit(train, validation_data=val, **kwargs)

    def image_model(self, hp, trained):
        return trained

    def predict_validation(self, hp, model, fold=None):
        rows = "val" if fold is None else self.data.folds()[fold][1]
        return model.predict(self.data.dataset(rows), verbose=0)

    def evaluate_validation(self, hp, model):
        """``model``'s metrics on the validation split, named as in a fit's logs (``val_...``)."""
        logs = model.evaluate(self.data.dataset("val"), verbose=0, return_dict=True)
        return {f"val_{name}": float(value) for name, value in logs.items()}


class SearchWeights:
    """A winner's starting weights from the search: its trial's best epoch, by layer name.

    KerasTuner saves each trial's best epoch (``checkpoint.weights.h5``; for a promoted
    configuration, that of its last Hyperband round). The file is loaded into the model
    the search trained (the trial's own hyperparameters, built by the search's
    hypermodel ``searched``) and handed on by layer name, so a model with more layers
    takes them too: a variant that unfreezes one block more (the extra block keeps its
    pretrained values) or the whole image model (``--augment``). Only weights move: the
    model they go into has its own fresh optimizer.
    """

    def __init__(self, config: RunConfig, searched):
        self.config, self.searched = config, searched
        self._last = (None, None)  # (trial_id, weights): a winner's trainings follow one another

    def __call__(self, trial_id: str) -> dict[str, list[np.ndarray]]:
        if self._last[0] != trial_id:
            path = self.config.layout.trial_checkpoint(trial_id)
            if not path.is_file():
                raise UserError(f"{path} is missing: the search kept no weights of trial {trial_id}; retrain "
                                "with --retrain-from scratch, or resume the search to finish it.")
            model = self.searched.build(trial_hyperparameters(self.config, trial_id))
            with warnings.catch_warnings():  # the checkpoint's optimizer state is not taken (a fresh optimizer)
                warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
                model.load_weights(path)
            self._last = (trial_id, {layer.name: layer.get_weights() for layer in model.layers if layer.weights})
        return self._last[1]


def start_from(model: keras.Model, weights: dict[str, list[np.ndarray]]) -> None:
    """Puts ``weights`` (:class:`SearchWeights`) into ``model``'s layers of the same names."""
    for name, values in weights.items():
        model.get_layer(name).set_weights(values)


class _StopFromStart(keras.callbacks.EarlyStopping):
    """Early stopping whose best so far is the starting weights (validation loss ``start``).

    Keras' own takes the first epoch as the best so far, so a warm start would keep an
    epoch worse than the weights it began with; here epochs must beat the start.
    """

    def __init__(self, start: float, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.start = start

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.best, self.best_weights, self.best_epoch = self.start, self.model.get_weights(), -1


class _Deadline:
    """A ``--time-budget``'s moment (``time.monotonic()``) the retrain's fits must end by; None: no deadline."""

    def __init__(self, at: float | None, extra: int = 0):
        self.at, self.extra = at, extra if at is not None else 0

    def passed(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at

    def leaves(self, fit: float | None, after: int) -> bool:
        """Whether a fit of ``fit`` seconds, and one for each of the ``after`` winners still to train, end before it
        (with a quarter more for each: a fit of another configuration traces its own steps)."""
        return fit is not None and time.monotonic() + 1.25 * fit * (1 + after) <= self.at

    def callbacks(self) -> list:
        """A fit's callback that ends it after the epoch whose successor would end after the deadline."""
        if self.at is None:
            return []
        at, began = self.at, []

        class _StopAt(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                began.append(time.monotonic())

            def on_epoch_end(self, epoch, logs=None):
                now = time.monotonic()
                if now + (now - began[-1]) > at:
                    self.model.stop_training = True

        return [_StopAt()]


def _accuracy(labels: np.ndarray, probs: np.ndarray) -> float:
    """Argmax accuracy, or for findings the share of unmasked entries called right at 0.5."""
    if labels.ndim == 1:
        return float((probs.argmax(1) == labels).mean())
    known = labels != -1
    return float(((probs >= 0.5) == (labels == 1))[known].mean())


def _fit(training, hp, seed, epochs, callbacks=(), clock: timing.EpochClock | None = None,
         objective: str = OBJECTIVE, start: dict | None = None) -> tuple:
    """One training with early stopping on ``objective`` (best epoch's weights kept).

    ``start``: weights to begin from (:class:`SearchWeights`); epochs must then beat
    their validation figures, which are returned too (else None).

    Returns:
        The model, its history and the starting validation figures.
    """
    fresh_keras_state(seed)
    model = training.build(hp)
    begun = None
    if start is None:
        stop = keras.callbacks.EarlyStopping(objective, patience=PATIENCE, mode="min", restore_best_weights=True)
    else:
        start_from(model, start)
        begun = training.evaluate_validation(hp, model)
        stop = _StopFromStart(begun[objective], objective, patience=PATIENCE, mode="min", restore_best_weights=True)
    timed = [clock.callback()] if clock else []
    history = training.fit(hp, model, epochs=epochs, callbacks=[stop, *callbacks, *timed], verbose=0).history
    return model, {k: [float(v) for v in values] for k, values in history.items()}, begun


def _fit_and_keep(training, hp, seed, epochs, staging: Path, callbacks=list, progress=None, clock=None, *,
                  rows: np.ndarray, objective: str = OBJECTIVE, start: dict | None = None) -> dict:
    """Trains one seed; saves the model if it beats the seeds saved before it (``progress``: a callback).

    ``rows``: the validation split's rows, which the saved probabilities are of.
    ``start``: the weights it begins from (see :func:`_fit`); best epoch 0 is those weights kept.
    """
    model, history, begun = _fit(training, hp, seed, epochs, [*callbacks(), *filter(None, [progress])], clock,
                                 objective, start)
    best_epoch = int(np.nanargmin(history[objective]))
    score = {"seed": seed, OBJECTIVE: history[objective][best_epoch], "best_epoch": best_epoch + 1,
             "epochs_run": len(history[objective]), "val_accuracy": history["val_accuracy"][best_epoch]}
    if begun is not None:
        score["start_" + OBJECTIVE] = begun[objective]
        if not score[OBJECTIVE] < begun[objective]:  # no epoch beat the search's weights: they were kept
            score.update({OBJECTIVE: begun[objective], "best_epoch": 0, "val_accuracy": begun["val_accuracy"]})
    saved = staging / _SCORE
    if not saved.is_file() or score[OBJECTIVE] < json.loads(saved.read_text())[OBJECTIVE]:
        staging.mkdir(parents=True, exist_ok=True)
        training.image_model(hp, model).save(staging / WINNER_MODEL)
        # What the final stage fits on, from the data the model trained on: no pass over the images.
        files.write_npz(staging / WINNER_VALIDATION, rows=rows,
                        probabilities=training.predict_validation(hp, model))
        files.write_json(staging / WINNER_HISTORY, history)
        files.write_json(staging / WINNER_HYPERPARAMETERS, hp.get_config())
        files.write_json(saved, score)
    return score


def _result(entry: dict, scores: list[dict], objective: str = OBJECTIVE) -> dict:
    losses = np.array([s[OBJECTIVE] for s in scores])
    best = scores[int(losses.argmin())]
    return {"trial_id": entry["trial_id"], "search_" + OBJECTIVE: entry[objective],
            OBJECTIVE: {"mean": float(losses.mean()), "std": float(losses.std(ddof=1)) if len(losses) > 1 else 0.0,
                        "best": float(losses.min())},
            "best_seed": best["seed"], "best_epoch": best["best_epoch"], "val_accuracy": best["val_accuracy"],
            "seeds": scores, "hyperparameters": entry["hyperparameters"]}


def _rank_and_save(config: RunConfig, results: list[dict], augment: bool, epochs: int, variant: dict,
                   from_: str) -> dict:
    winners_dir = config.layout.winners
    results.sort(key=lambda r: r[OBJECTIVE]["mean"])
    for rank, result in enumerate(results, start=1):
        result["rank"], result["dir"] = rank, f"{rank}-{result['trial_id']}"
        (winners_dir / f"trial_{result['trial_id']}" / _SCORE).unlink()
        (winners_dir / f"trial_{result['trial_id']}").rename(winners_dir / result["dir"])
    ranked_on = ("out-of-fold predictions on train+val (--folds)" if config.folds else "validation split only")
    summary = {"ranked_by": f"mean {task_of(config).objective} over seeds, {ranked_on} (lower is better)",
               "augment": augment, "from": from_, "variant": variant, "max_epochs": epochs, "patience": PATIENCE,
               "winners": results, SPLIT_STAMP: config.layout.split_digest()}
    files.write_json(config.layout.winners_summary, summary)
    return summary


def _mean_std_text(result: dict) -> str:
    score, seeds = result[OBJECTIVE], len(result["seeds"])
    spread = number_text(score.get("std") if seeds > 1 else None, ".4f",
                                 "one seed" if seeds < 2 else "not recorded")
    return f"{number_text(score.get('mean'), '.4f')} ± {spread} over {seeds} seed(s)"


def pick_variant(fit: Callable[[keras_tuner.HyperParameters, list], float], hp: keras_tuner.HyperParameters,
           weights: str, log: Callable[[str], None] = print, allowed=None,
           objective: str = OBJECTIVE, *, specs) -> tuple[variants.Variant, dict]:
    """Trains each candidate variant of ``hp`` with ``fit(hp, callbacks) -> best validation loss``; the lowest wins.

    ``specs``: the run's backbones (`RunConfig.backbone_specs`).

    Returns:
        The chosen variant and ``{variant name: validation loss}``.
    """
    tried = variants.candidates(hp, weights, allowed, specs=specs)
    if len(tried) == 1:
        return tried[0], {}
    scores = {v.name: fit(v.hyperparameters(hp), v.callbacks(objective)) for v in tried}
    chosen = min(tried, key=lambda v: scores[v.name])
    log("retrain choice, on validation (" + ", ".join(f"{n}: {objective} {number_text(s, '.4f')}" for n, s in scores.items())
        + f"): {chosen.name}")
    return chosen, scores
