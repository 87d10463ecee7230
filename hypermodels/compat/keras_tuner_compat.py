"""KerasTuner 1.4.8's private names the project needs, each behind one name that says why.

Public KerasTuner (``keras_tuner``, ``keras_tuner.engine``, ``keras_tuner.oracles``) is
used directly everywhere else; what is here has no public form. Asserted by
tests/hypermodels/test_compat.py.
"""

from __future__ import annotations

import threading

from keras_tuner.src import protos
from keras_tuner.src.distribute import oracle_chief
from keras_tuner.src.engine import oracle as oracle_module
from keras_tuner.src.engine import tuner_utils

SaveBestEpoch = tuner_utils.SaveBestEpoch
"""``SaveBestEpoch(objective, filepath)``: the callback KerasTuner saves a trial's best epoch with.

Why: ``--folds`` keeps one checkpoint per fold, as KerasTuner keeps one per trial, so a
promoted round continues each fold's model the way KerasTuner continues a trial's."""

OracleServicer = oracle_chief.OracleServicer
"""The chief's gRPC servicer of an oracle. Why: the chief extends it (heartbeats, releasing silent
workers) instead of reimplementing KerasTuner's protocol."""


def hparams_domains(hyperparameters, hparams_api) -> list:
    """TensorBoard HParams domains of KerasTuner ``hyperparameters``.

    Why: the experiment summary lists the search space as KerasTuner's own HParams
    logging would, and its converter is private.
    """
    return tuner_utils.convert_hyperparams_to_hparams(hyperparameters, hparams_api)


def add_oracle_servicer(servicer, server) -> None:
    """Registers ``servicer`` on gRPC ``server``. Why: KerasTuner's generated service module is private."""
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)


def oracle_stub(channel):
    """A client stub of the oracle service on gRPC ``channel`` (why: as :func:`add_oracle_servicer`)."""
    return protos.get_service_grpc().OracleStub(channel)


def get_space_request():
    """An empty ``GetSpaceRequest`` message: the workers' heartbeat (why: as :func:`add_oracle_servicer`)."""
    return protos.get_service().GetSpaceRequest()


def unlock_after_error(oracle) -> None:
    """Releases ``oracle``'s lock when this thread holds it.

    Why: ``keras_tuner.synchronized`` leaves the oracle locked when the call raises
    (1.4.8), and the chief still needs it, from another thread, to stop cleanly.
    """
    if oracle_module.THREADS[oracle] == threading.current_thread().name:
        oracle_module.THREADS[oracle] = None
        oracle_module.LOCKS[oracle].release()


def requeue(oracle, trial_id: str) -> None:
    """Puts ``trial_id`` on ``oracle``'s retry queue: ``create_trial`` serves it to the next tuner that asks.

    Why: the retry queue is how KerasTuner itself re-runs an unfinished trial
    (``Oracle.reload``), and only privately. Call it holding the oracle's lock.
    """
    oracle._retry_queue.append(trial_id)


def checkpoint_path(tuner, trial_id: str) -> str:
    """The file KerasTuner saves ``trial_id``'s best epoch to. Why: a kept model restarts from it."""
    return tuner._get_checkpoint_fname(trial_id)


def copied_callbacks(tuner, callbacks: list) -> list:
    """Deep copies of ``callbacks``, as KerasTuner gives each fit. Why: each fold of a trial needs its own."""
    return tuner._deepcopy_callbacks(callbacks)


def is_worker(tuner) -> bool:
    """Whether ``tuner`` runs as a worker of a distributed search. Why: only the chief writes the experiment summary."""
    return tuner._is_worker()


class TrialModelHook:
    """A tuner mixin that hands each trial's model build to :meth:`build_trial_model`.

    Why: KerasTuner builds a trial's model in the private ``Tuner._build_hypermodel``
    (Hyperband loads a promoted trial's checkpoint there); no public hook lets a
    tuner reuse a model it already built. Put it before the KerasTuner tuner class.
    """

    def _build_hypermodel(self, hp):
        return self.build_trial_model(hp, super()._build_hypermodel)

    def build_trial_model(self, hp, build):
        """The model of a trial with values ``hp``; ``build(hp)`` is KerasTuner's own build."""
        return build(hp)
