"""KerasTuner's own tuners, kept thin: seeding, memory hygiene, HParams, NaN trials."""

from __future__ import annotations

import gc
import math
import warnings
from pathlib import Path

import keras
import keras_tuner
import numpy as np
from keras_tuner.engine.tuner import maybe_distribute

from cxr_tuner.hypermodels.classifier import OBJECTIVE
from cxr_tuner.hypermodels.compat import keras_tuner_compat, tf_compat
from cxr_tuner.search.engine import console, timing
from cxr_tuner.search.tuning import hparams
from cxr_tuner.search.engine.config import RunConfig
from cxr_tuner.search.engine.task import task_of
from cxr_tuner.search.tuning.budget.deadline import DeadlineHyperbandOracle


"""Per finished trial: ``trial_id,peak RSS,RSS at its end,anonymous RSS at its end`` (MB).

The RSS counts the cache files' pages the trial read (memory maps); the anonymous
part is the process's own memory, where a leak would show."""


def reset_peak_rss() -> None:
    """Restarts the kernel's peak-RSS count (VmHWM) of this process; no-op off Linux."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """Peak resident memory (VmHWM) of this process since start or the last reset, in MB."""
    return _proc_status_mb("VmHWM")


def rss_mb() -> float:
    """Resident memory (VmRSS) of this process now, in MB."""
    return _proc_status_mb("VmRSS")


def _proc_status_mb(field: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class _NanGuard(keras.callbacks.Callback):
    """Fails the trial, with its reason, when a training or validation loss stops being a number.

    Validation too: a diverged model's training loss can stay finite (it is averaged
    over the epoch, and cross-entropy clips probabilities) while its val loss is inf,
    which KerasTuner would record as a COMPLETED trial with score inf.
    """

    def on_epoch_end(self, epoch, logs=None):
        for name, value in (logs or {}).items():
            if name.endswith("loss") and not math.isfinite(value):
                raise keras_tuner.errors.FailedTrialError(f"{name} became {value} at epoch {epoch + 1}")


class _EpochCurves(keras.callbacks.TensorBoard):
    """Per-epoch curves for one trial.

    Named so that KerasTuner does not patch it with its own HParams callback: the
    sessions are written by :mod:`search.tuning.hparams`, with Hyperband's bracket and round.
    """


class _XrayTunerMixin:
    """What every tuner of this project adds to KerasTuner's."""

    def __init__(self, *args, run_config: RunConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.run_config = run_config
        self.clock = timing.EpochClock()  # the trials' floor: their epochs at each one's fastest

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The run's HParams metrics, its objective first."""
        return tuple(hparams.run_metrics(self.run_config))

    @property
    def tensorboard_dir(self):
        return self.run_config.layout.tensorboard

    def on_search_begin(self):
        # Every trial collects garbage several times (KerasTuner and Keras both do
        # before each build), and with TensorFlow loaded a full collection is slow.
        # Objects alive before the search (modules, the data) are not garbage:
        # freezing them leaves collections only what trials create.
        gc.collect()
        gc.freeze()
        super().on_search_begin()

    def on_trial_begin(self, trial):
        # KerasTuner's well-known leak: graphs and models of earlier trials stay
        # reachable unless the session is cleared before each build.
        fresh_keras_state(self.run_config.seed)
        reset_peak_rss()
        self._gradients_before = set(_custom_gradients())
        super().on_trial_begin(trial)

    def run_trial(self, trial, *args, **kwargs):
        if self.run_config.folds:
            return self._run_folds(trial, kwargs)
        curves = _EpochCurves(str(self.tensorboard_dir / trial.trial_id), write_graph=False,
                              profile_batch=0)
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), _NanGuard(), curves, self.clock.callback()]
        with warnings.catch_warnings():
            # Hyperband's later rounds load the earlier round's weights into a model
            # whose optimizer is not built yet; starting it afresh is intended.
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            return super().run_trial(trial, *args, **kwargs)

    def _run_folds(self, trial, kwargs) -> dict:
        """``--folds``: one model per fold of train+val; the trial's score is the mean of their best losses.

        Every fold trains Hyperband's epochs of the round, a promoted round continuing
        that fold's model from its best epoch (per-fold checkpoints, as KerasTuner keeps
        one per trial). KerasTuner gets one metrics dict: the mean, and each fold's
        score and best epoch (what the retrain's epochs come from).
        """
        hp = trial.hyperparameters
        if "tuner/epochs" in hp.values:
            kwargs.update(epochs=hp.values["tuner/epochs"], initial_epoch=hp.values["tuner/initial_epoch"])
        layout, parent = self.run_config.layout, hp.values.get("tuner/trial_id")
        # One model for every fold: built and compiled once, so its training step is traced
        # once per trial, and put back to its initial state before each fold (what a fresh
        # build with the same seed starts from).
        fresh_keras_state(self.run_config.seed)
        with maybe_distribute(self.distribution_strategy):
            model = self.hypermodel.build(hp)
        start = Restart(model)
        scores = []
        for fold in range(self.run_config.folds):
            callbacks = [*keras_tuner_compat.copied_callbacks(self, kwargs.get("callbacks", [])), _NanGuard(),
                         self.clock.callback(),
                         _EpochCurves(str(self.tensorboard_dir / trial.trial_id / f"fold_{fold + 1}"),
                                      write_graph=False, profile_batch=0),
                         keras_tuner_compat.SaveBestEpoch(self.oracle.objective,
                                                          str(layout.fold_checkpoint(trial.trial_id, fold)))]
            start.reset(layout.fold_checkpoint(parent, fold) if parent else None)
            history = self.hypermodel.fit(hp, model, **{**kwargs, "callbacks": callbacks}, fold=fold)
            scores.append(hparams.fold_score(history, self.metric_names))
        return hparams.fold_metrics(scores, self.metric_names)

    def on_trial_end(self, trial):
        _forget_custom_gradients(getattr(self, "_gradients_before", set()))
        super().on_trial_end(trial)
        finished = self.oracle.get_trial(trial.trial_id)
        hparams.write_trial(self.tensorboard_dir, finished, self.metric_names)
        peak, now, anonymous = peak_rss_mb(), rss_mb(), _proc_status_mb("RssAnon")
        with open(self.run_config.layout.memory, "a") as log:
            log.write(f"{trial.trial_id},{peak:.1f},{now:.1f},{anonymous:.1f}\n")
        print(f"{trial_line(finished)}  peak RSS {peak:.0f} MB", flush=True)

    def on_search_end(self):
        super().on_search_end()
        gc.unfreeze()
        if not keras_tuner_compat.is_worker(self):  # a distributed search's chief writes it, once
            hparams.write_experiment(self.tensorboard_dir, self.oracle.get_space(), self.run_config.folds,
                                     hparams.run_metrics(self.run_config))


class _HyperbandOn(keras_tuner.Hyperband):
    """KerasTuner's Hyperband tuner on a given Hyperband oracle (ours: `DeadlineHyperbandOracle`).

    ``keras_tuner.Hyperband.__init__`` only makes a ``HyperbandOracle`` and hands it to
    ``Tuner``; handing ``Tuner`` ours keeps Hyperband's ``run_trial`` (a round's epochs)
    and its loading of a promoted trial's checkpoint.
    """

    def __init__(self, oracle, hypermodel=None, **kwargs):
        keras_tuner.Tuner.__init__(self, oracle=oracle, hypermodel=hypermodel, **kwargs)


class XrayHyperband(_XrayTunerMixin, keras_tuner_compat.TrialModelHook, _HyperbandOn):
    """KerasTuner's Hyperband with this project's trial hygiene and logging.

    A promoted trial (a configuration's next, longer round) trains the model object
    of the round it continues instead of a fresh build: a fresh model traces its
    train and test steps again, most of a short trial on cached activations. The
    kept model restarts where a fresh build starts before the round's best-epoch
    checkpoint goes in, so no score changes (tested).
    """

    MAX_KEPT = 16
    """Most models kept for promotion at once (a bracket's first round can hold more)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._kept = {}  # trial_id -> (bracket, Restart of its model)
        self._built = None

    def build_trial_model(self, hp, build):
        values = hp.values
        self._kept = {k: v for k, v in self._kept.items() if v[0] == values.get("tuner/bracket")}
        source = self._kept.pop(values.get("tuner/trial_id"), None)
        if source is None:
            # A promoted round loads its checkpoint's weights: no copy of the initial ones is needed.
            start = Restart(build(hp), keep_weights=False)
        else:
            start = source[1]
            start.reset(keras_tuner_compat.checkpoint_path(self, values["tuner/trial_id"]))
        self._built = start
        return start.model

    def on_trial_end(self, trial):
        built, self._built = self._built, None
        super().on_trial_end(trial)
        values = trial.hyperparameters.values
        promotable = values.get("tuner/round", 0) < values.get("tuner/bracket", 0)
        if built and promotable and self.oracle.get_trial(trial.trial_id).status == "COMPLETED":
            self._kept[trial.trial_id] = (values["tuner/bracket"], built)
            while len(self._kept) > self.MAX_KEPT:
                del self._kept[next(iter(self._kept))]

    def on_search_end(self):
        self._kept.clear()
        super().on_search_end()


class Restart:
    """Puts a built, compiled model back to its state as built, instead of building it again.

    A fresh build traces its training and test steps again; a model put back keeps
    them. Its weights, dropout seed states and optimizer state (zero, as a new Adam's)
    return to what the build gave, so a fit after ``reset()`` scores as one on a fresh
    build with the same seed does.
    """

    def __init__(self, model: keras.Model, keep_weights: bool = True):
        self.model = model
        self.weights = model.get_weights() if keep_weights else None  # only for a reset without a checkpoint
        self.seeds = [v.numpy() for v in _seed_states(model)]
        self.used = False

    def reset(self, checkpoint=None) -> None:
        """Back to the state as built; then ``checkpoint``'s weights when given (a round continued)."""
        if self.used and checkpoint is None:
            self.model.set_weights(self.weights)
        self.used = True
        if checkpoint is not None:
            with warnings.catch_warnings():
                # The checkpoint holds the optimizer state of the round it ends, which a
                # continued round does not take (KerasTuner's fresh builds skip it too).
                warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
                self.model.load_weights(checkpoint)
        _restart(self.model, self.seeds)


def _seed_states(model: keras.Model) -> list:
    """The state variables of ``model``'s random seed generators (dropout masks)."""
    return [v for v in model.variables if v.name == "seed_generator_state"]


def _restart(model: keras.Model, seeds: list) -> None:
    """Puts a trained model's training state back to where a fresh build starts it.

    The optimizer's state goes to zero, as a new Adam's is (the checkpoint just
    loaded would otherwise restore it; KerasTuner's fresh builds skip it), the
    learning rate stays; dropout seed generators go back to their first state.
    """
    for variable in model.optimizer.variables:
        if variable.name != "learning_rate":
            variable.assign(np.zeros(variable.shape, variable.dtype))
    for variable, value in zip(_seed_states(model), seeds):
        variable.assign(value)


class XrayBayesianOptimization(_XrayTunerMixin, keras_tuner.BayesianOptimization):
    """KerasTuner's Bayesian optimisation with this project's hygiene and logging."""


class XrayRandomSearch(_XrayTunerMixin, keras_tuner.RandomSearch):
    """KerasTuner's random search with this project's hygiene and logging."""


def make_tuner(config: RunConfig, hypermodel: keras_tuner.HyperModel,
               distribution_strategy=None) -> keras_tuner.Tuner:
    """Creates (or reloads, to resume) the tuner the config names.

    Args:
        distribution_strategy: A ``tf.distribute`` strategy each trial trains under.
    """
    objective = keras_tuner.Objective(task_of(config).objective, direction="min")
    common = dict(
        distribution_strategy=distribution_strategy,
        hypermodel=hypermodel,
        directory=str(config.layout.tuner.parent),
        project_name=config.layout.tuner.name,
        overwrite=config.overwrite,
        run_config=config,
    )
    if config.tuner == "hyperband":
        # Hyperband's own oracle, subclassed to stop at a --time-budget's deadline (none: as KerasTuner's).
        oracle = DeadlineHyperbandOracle(objective, max_epochs=config.max_epochs, factor=config.factor,
                                         seed=oracle_seed(config.seed))
        return XrayHyperband(oracle=oracle, **common)
    common.update(objective=objective, seed=oracle_seed(config.seed))
    if config.tuner == "bayesian":
        return XrayBayesianOptimization(max_trials=config.max_trials, **common)
    return XrayRandomSearch(max_trials=config.max_trials, **common)


def oracle_seed(seed: int) -> int:
    """The seed handed to KerasTuner's oracle for the run's ``--seed``.

    KerasTuner treats a seed of 0 as "no seed" (``seed or random.randint(...)``),
    so ``--seed 0``, the default, would sample a different trial sequence in every
    process. Non-negative seeds shift by one; negative ones are already non-zero.
    """
    return seed + 1 if seed >= 0 else seed


def _custom_gradients() -> dict:
    return tf_compat.gradient_registry()  # private: the only handle on this leak (TF 2.21)


def _forget_custom_gradients(keep: set) -> None:
    """Drops the gradient functions a trial's training step registered.

    Every traced training step registers a ``CustomGradient-N`` entry (the
    optimizer's gradient all-reduce) in TensorFlow's global gradient registry and
    never removes it; the entry holds the whole traced step graph, so memory
    climbed trial after trial even with ``clear_session``. The entries are only
    read while tracing that step, which is over when the trial ends.
    """
    registry = _custom_gradients()
    for name in [n for n in registry if n.startswith("CustomGradient-") and n not in keep]:
        del registry[name]


def fresh_keras_state(seed: int) -> None:
    """Before each model of a search or retrain: no earlier graph or model stays reachable, seeds reset."""
    keras.backend.clear_session()
    gc.collect()
    keras.utils.set_random_seed(seed)


def trial_line(trial) -> str:
    """One line for a finished trial: id, Hyperband bracket and round, score or why it failed."""
    values = trial.hyperparameters.values
    objective = _objective_name(trial)
    score = "failed: " + _reason(trial.message) if trial.score is None else f"{objective}={trial.score:.4f}"
    bracket = f" bracket {values['tuner/bracket']} round {values['tuner/round']}" if "tuner/bracket" in values else ""
    shown = {k: v for k, v in hparams.trial_hparams(trial).items() if not k.startswith("tuner/")}
    return f"trial {trial.trial_id}{bracket}: {score}  {console.hyperparameter_text(shown)}"


def _objective_name(trial) -> str:
    """The objective a trial was scored on: the multi-label one when its metrics hold it."""
    from cxr_tuner.hypermodels.classifier import OBJECTIVE_MULTILABEL

    return OBJECTIVE_MULTILABEL if trial.metrics.exists(OBJECTIVE_MULTILABEL) else OBJECTIVE


def _reason(message: str | None) -> str:
    """The last non-empty line of a failed trial's message: KerasTuner stores the traceback, the error comes last."""
    lines = [line for line in (message or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown reason"
