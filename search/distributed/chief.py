"""The chief of a distributed search: serves the oracle to the workers, releases silent ones.

See :mod:`search.distributed.protocol` for what this adds to KerasTuner's chief/worker mode.
"""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
import time
from concurrent import futures
from typing import Callable

import grpc
import keras_tuner
from keras_tuner.engine import trial as trial_module

from cxr_tuner.data.errors import UserError
from cxr_tuner.hypermodels.compat import keras_tuner_compat
from cxr_tuner.search.tuning import hparams
from cxr_tuner.search.distributed.protocol import (CHIEF_ID, INSTANCE_KEY, WORKER_KEY, kerastuner_env, parse_address,
                                resume_across_modes)
from cxr_tuner.search.tuning.tuner import make_tuner, trial_line

_SERVER_THREAD = "oracle-server"


def run_chief(config, hypermodel, address: str, worker_timeout: float, log: Callable[[str], None],
              check: Callable[[], None] | None = None):
    """Builds the chief's tuner, serves the search until it is done, writes the experiment summary.

    ``check``, if given, is called while serving and may raise to stop (e.g. when
    the local workers it watches have all failed).

    Returns:
        The tuner, whose oracle holds every trial of the search.
    """
    resume_across_modes(config.layout.tuner, CHIEF_ID)
    with kerastuner_env(CHIEF_ID, address):
        tuner = make_tuner(config, hypermodel)
        serve(tuner, address, worker_timeout, log, check)
    # on_search_end runs on workers only; the chief writes the summary, once.
    hparams.write_experiment(tuner.tensorboard_dir, tuner.oracle.get_space(), config.folds, hparams.run_metrics(config))
    trials = tuner.oracle.trials.values()
    log(f"chief: the search is done: {len(trials)} trials, "
        f"{sum(t.status == 'COMPLETED' for t in trials)} completed")
    return tuner


def serve(tuner, address: str, worker_timeout: float, log: Callable[[str], None],
          check: Callable[[], None] | None = None) -> None:
    """Serves ``tuner``'s oracle to the workers until the search is done; runs no trial.

    Replaces ``BaseTuner.search`` on the chief (save, then serve), with a loop that
    releases workers silent for ``worker_timeout`` seconds and exits once every
    trial has ended and every worker has been told to stop.
    """
    host, port = parse_address(address)
    tuner.oracle.verbose = 0  # trial lines come from the servicer, one per trial
    tuner.save()  # chief.json + oracle.json: a restarted chief resumes
    roster = _Roster(worker_timeout)
    servicer = _Servicer(tuner.oracle, roster)
    # SO_REUSEPORT would let a second chief share a busy port without an error.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=_SERVER_THREAD),
                         options=[("grpc.so_reuseport", 0)])
    keras_tuner_compat.add_oracle_servicer(servicer, server)
    _bind(server, host, port)
    server.start()
    log(f"chief: serving the search at {host}:{port}; start workers with "
        f"`cxr-tuner worker --chief HOST:{port} --run-dir {tuner.run_config.run_dir}`")
    try:
        with contextlib.redirect_stdout(_MutedThreads(sys.stdout, _SERVER_THREAD)):
            _watch(tuner, servicer, roster, worker_timeout, log, check)
    finally:
        server.stop(grace=5).wait()
        while not servicer.lines.empty():
            log(servicer.lines.get())


def _watch(tuner, servicer: "_Servicer", roster: "_Roster", worker_timeout: float, log, check=None) -> None:
    """Until the search is done: prints the servicer's lines, releases silent workers."""
    while True:
        time.sleep(0.5)
        while not servicer.lines.empty():
            log(servicer.lines.get())
        if servicer.error is not None:
            raise servicer.error
        if servicer.stop_triggered and _search_done(tuner.oracle):
            return
        if check is not None:
            check()
        for worker in roster.silent():
            _release_worker(tuner, worker, servicer.reissued, worker_timeout, log)


class _MutedThreads:
    """A text stream that drops what threads named ``prefix...`` write.

    KerasTuner 1.4.8 prints a stray debug line (``print(self.values[0])`` in
    ``conditions.Parent.to_proto``) for each conditional hyperparameter, every time
    a trial or the search space goes over gRPC: many lines a second on the chief.
    """

    def __init__(self, stream, prefix: str):
        self._stream = stream
        self._prefix = prefix

    def write(self, text: str) -> int:
        if threading.current_thread().name.startswith(self._prefix):
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _bind(server, host: str, port: int) -> None:
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        bound = 0
    if not bound:
        raise UserError(f"The chief cannot listen on {host}:{port} (in use, or not an address of this "
                        "machine); pick another port, or 0.0.0.0:PORT to listen on every interface.")


class _Roster:
    """When each worker last gave a sign of life (thread-safe: the server thread writes)."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self._lock = threading.Lock()
        self._seen = {}  # worker id -> (monotonic time, instance token or None)
        self._dead = set()  # instance ids of released worker processes

    def seen(self, worker: str, instance: str | None = None) -> bool:
        """Records a sign of life; False if this instance was already released."""
        with self._lock:
            if instance is not None and instance in self._dead:
                return False
            previous = self._seen.get(worker, (0, None))[1]
            self._seen[worker] = (time.monotonic(), instance or previous)
            return True

    def forget(self, worker: str) -> None:
        """Stops watching a worker the oracle told to stop (it exits)."""
        with self._lock:
            self._seen.pop(worker, None)

    def silent(self) -> list[str]:
        """Forgets, and returns, the workers silent for longer than the timeout."""
        with self._lock:
            now = time.monotonic()
            gone = [w for w, (at, _) in self._seen.items() if now - at > self.timeout]
            for worker in gone:
                self._dead.add(self._seen.pop(worker)[1])
            self._dead.discard(None)
            return gone


class _Servicer(keras_tuner_compat.OracleServicer):
    """KerasTuner's servicer, noting which worker is alive and reporting each trial."""

    def __init__(self, oracle, roster: _Roster):
        super().__init__(oracle)
        self.roster = roster
        self.lines = queue.SimpleQueue()  # printed by the serve loop (this thread is muted)
        self.reissued = set()  # trial ids already re-issued once
        self.error = None  # what stopped the search, raised by the serve loop

    def GetSpace(self, request, context):  # noqa: N802 (gRPC's names); also the heartbeat
        metadata = dict(context.invocation_metadata())
        if WORKER_KEY in metadata and not self.roster.seen(metadata[WORKER_KEY], metadata.get(INSTANCE_KEY)):
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "this worker was released as silent")
        return super().GetSpace(request, context)

    def CreateTrial(self, request, context):  # noqa: N802
        self.roster.seen(request.tuner_id)
        response = super().CreateTrial(request, context)
        status = trial_module.TrialStatus.from_proto(response.trial.status)
        if status == trial_module.TrialStatus.RUNNING:
            self.lines.put(f"trial {response.trial.trial_id} -> worker {request.tuner_id}")
        elif status == trial_module.TrialStatus.STOPPED:
            self.roster.forget(request.tuner_id)
        return response

    def EndTrial(self, request, context):  # noqa: N802
        worker = _owner(self.oracle, request.trial.trial_id)
        try:
            response = super().EndTrial(request, context)
        except RuntimeError as error:  # KerasTuner's stop after failed trials in a row
            keras_tuner_compat.unlock_after_error(self.oracle)
            self.error = error
            context.abort(grpc.StatusCode.ABORTED, str(error).splitlines()[0])
        self.lines.put(f"{trial_line(self.oracle.get_trial(request.trial.trial_id))}  (worker {worker})")
        return response


@keras_tuner.synchronized
def _owner(oracle, trial_id: str) -> str | None:
    return next((t for t, trial in oracle.ongoing_trials.items() if trial.trial_id == trial_id), None)


@keras_tuner.synchronized
def _search_done(oracle) -> bool:
    # As KerasTuner's exit_chief: every trial ended and every worker told to stop.
    return not oracle.ongoing_trials and not oracle.tuner_ids


@keras_tuner.synchronized
def _take_trial(oracle, worker: str):
    """Removes a released worker from the oracle; returns the trial it was running, if any."""
    oracle.tuner_ids.discard(worker)
    return oracle.ongoing_trials.pop(worker, None)


def _release_worker(tuner, worker: str, reissued: set, timeout: float, log) -> None:
    """A worker silent for ``timeout`` s: its trial runs again elsewhere, or fails the second time."""
    oracle = tuner.oracle
    trial = _take_trial(oracle, worker)
    if trial is None:
        log(f"worker {worker}: no sign of life for {timeout:.0f} s, released (it held no trial)")
    elif trial.trial_id not in reissued:
        reissued.add(trial.trial_id)
        _requeue(oracle, trial.trial_id)
        log(f"worker {worker}: no sign of life for {timeout:.0f} s; its trial {trial.trial_id} "
            "goes to the next worker that asks")
    else:
        trial.status = trial_module.TrialStatus.FAILED
        trial.message = f"lost two workers (the last: {worker}) while running"
        try:
            oracle.end_trial(trial)
        except RuntimeError:
            keras_tuner_compat.unlock_after_error(oracle)
            raise
        hparams.write_trial(tuner.tensorboard_dir, oracle.get_trial(trial.trial_id), tuner.metric_names)
        log(f"worker {worker}: no sign of life for {timeout:.0f} s; {trial_line(oracle.get_trial(trial.trial_id))}")


@keras_tuner.synchronized
def _requeue(oracle, trial_id: str) -> None:
    # The retry queue is how KerasTuner itself re-runs an unfinished trial
    # (Oracle.reload puts ongoing trials there); create_trial serves it first.
    keras_tuner_compat.requeue(oracle, trial_id)
    oracle.save()
