"""Distributed search on KerasTuner's own chief/worker mode, with workers allowed to die.

KerasTuner (1.4.8) does the distribution: the chief holds the oracle and answers the
workers' ``OracleClient`` over gRPC; workers run trials. What it lacks, and this
module adds around it:

- A worker that dies keeps its trial RUNNING and its id in ``oracle.tuner_ids``
  forever: nothing re-issues the trial, Hyperband waits for it (IDLE) and the chief
  never exits (its loop waits for both to empty). Workers here send a heartbeat;
  the chief's serve loop (a replacement for ``oracle_chief.start_server``, with
  KerasTuner's own ``OracleServicer``) releases a silent worker: its trial goes to
  the oracle's retry queue once (KerasTuner's own re-run path, as on a resume) and
  is marked FAILED if it loses a second worker. A released worker that comes back
  (suspended, cut off) learns it at its next check-in, before any report, and exits.
- A worker whose chief is gone would wait in a gRPC call for up to an hour
  (``OracleClient`` calls wait for the server); the heartbeat ends it sooner.
- An idle worker asks again at once when Hyperband answers IDLE; it pauses here.
- KerasTuner prints a stray debug line per conditional hyperparameter whenever a
  trial crosses gRPC; those are muted.

``KERASTUNER_TUNER_ID``, ``KERASTUNER_ORACLE_IP`` and ``KERASTUNER_ORACLE_PORT`` are
set by :func:`kerastuner_env` only, the project's one use of environment variables
as settings.
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import re
import shutil
import socket
import sys
import threading
import time
import uuid
from concurrent import futures
from pathlib import Path
from typing import Callable

import grpc
import keras_tuner
from keras_tuner.src import protos
from keras_tuner.src.distribute import oracle_chief
from keras_tuner.src.engine import oracle as oracle_module
from keras_tuner.src.engine import trial as trial_module

from data.errors import UserError
from search import hparams
from search.tuner import make_tuner, trial_line

CHIEF_ID = "chief"
"""The chief's tuner id: KerasTuner treats any id containing "chief" as the chief."""
_LOCAL_ID = "tuner0"  # KerasTuner's tuner id without distribution
HEARTBEAT_SECONDS = 2.0
CHIEF_LOST_SECONDS = 120.0
"""A worker gives up when the chief has not answered for this long."""
_IDLE_PAUSE_SECONDS = 1.0
_WORKER_KEY, _INSTANCE_KEY = "x-cxr-worker", "x-cxr-instance"  # gRPC metadata keys are lowercase
_SERVER_THREAD = "oracle-server"
_ENV = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")


def parse_address(address: str) -> tuple[str, int]:
    """``"HOST:PORT"`` -> ``(host, port)``.

    Raises:
        UserError: If it is not of that form.
    """
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--chief {address!r} is not HOST:PORT (e.g. 0.0.0.0:8000 on the chief, "
                        "chief-host:8000 on the workers).")
    return host.strip("[]"), int(port)


def default_worker_id() -> str:
    """``HOSTNAME-PID``: unique across the machines of a search."""
    return check_worker_id(f"{socket.gethostname()}-{os.getpid()}".replace("chief", "chf"))


def check_worker_id(worker_id: str) -> str:
    """A worker id is a file name (``tuner/<id>.json``) and must not contain "chief"."""
    if not re.fullmatch(r"[A-Za-z0-9._-]+", worker_id) or "chief" in worker_id:
        raise UserError(f"--worker-id {worker_id!r}: use letters, digits, '.', '_' and '-', "
                        "without the word 'chief' (KerasTuner takes such a tuner for the chief).")
    return worker_id


@contextlib.contextmanager
def kerastuner_env(tuner_id: str, address: str):
    """Sets KerasTuner's distributed-tuning variables for the block, then restores them.

    KerasTuner reads them when a tuner is constructed (its id; an ``OracleClient``
    on workers) and again in ``search``, ``save`` and ``reload`` (chief or worker?),
    never at import: the block must hold the tuner's construction and its search.
    """
    host, port = parse_address(address)
    saved = {name: os.environ.get(name) for name in _ENV}
    os.environ.update(zip(_ENV, (tuner_id, host, str(port))))
    try:
        yield
    finally:
        for name, value in saved.items():
            os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)


def resume_across_modes(tuner_dir, tuner_id: str) -> None:
    """Lets a search started on one machine resume distributed, and the other way round.

    KerasTuner reloads the oracle only when the tuner file of this process's id
    exists (``tuner0.json`` on one machine, ``chief.json`` for a chief): without
    it, a search begun in the other mode would start over and overwrite its trials.
    """
    tuner_dir = Path(tuner_dir)
    mine = tuner_dir / f"{tuner_id}.json"
    other = tuner_dir / (f"{CHIEF_ID}.json" if tuner_id == _LOCAL_ID else f"{_LOCAL_ID}.json")
    if (tuner_dir / "oracle.json").is_file() and not mine.is_file() and other.is_file():
        shutil.copyfile(other, mine)


def distribution_strategy(name: str | None, log: Callable[[str], None]):
    """The ``tf.distribute`` strategy a trial trains under: None, or ``"mirrored"``."""
    if name in (None, "none"):
        return None
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy()
    gpus = len(tf.config.list_logical_devices("GPU"))
    log(f"--strategy mirrored: each trial trains on {gpus} GPUs ({strategy.num_replicas_in_sync} replicas)"
        if gpus else "--strategy mirrored: no GPU on this machine, each trial trains with 1 replica on the CPU")
    return strategy


# ---------------------------------------------------------------------------- chief


def run_chief(config, hypermodel, address: str, worker_timeout: float, log: Callable[[str], None]):
    """Builds the chief's tuner, serves the search until it is done, writes the experiment summary.

    Returns:
        The tuner, whose oracle holds every trial of the search.
    """
    resume_across_modes(config.path / "tuner", CHIEF_ID)
    with kerastuner_env(CHIEF_ID, address):
        tuner = make_tuner(config, hypermodel)
        serve(tuner, address, worker_timeout, log)
    # on_search_end runs on workers only; the chief writes the summary, once.
    hparams.write_experiment(tuner.tensorboard_dir, tuner.oracle.get_space())
    trials = tuner.oracle.trials.values()
    log(f"chief: the search is done: {len(trials)} trials, "
        f"{sum(t.status == 'COMPLETED' for t in trials)} completed")
    return tuner


def serve(tuner, address: str, worker_timeout: float, log: Callable[[str], None]) -> None:
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
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    _bind(server, host, port)
    server.start()
    log(f"chief: serving the search at {host}:{port}; start workers with "
        f"`python cli.py worker --chief HOST:{port} --run-dir {tuner.run_config.run_dir}`")
    try:
        with contextlib.redirect_stdout(_MutedThreads(sys.stdout, _SERVER_THREAD)):
            _watch(tuner, servicer, roster, worker_timeout, log)
    finally:
        server.stop(grace=5).wait()
        while not servicer.lines.empty():
            log(servicer.lines.get())


def _watch(tuner, servicer: "_Servicer", roster: "_Roster", worker_timeout: float, log) -> None:
    """Until the search is done: prints the servicer's lines, releases silent workers."""
    while True:
        time.sleep(0.5)
        while not servicer.lines.empty():
            log(servicer.lines.get())
        if servicer.error is not None:
            raise servicer.error
        if servicer.stop_triggered and _search_done(tuner.oracle):
            return
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


class _Servicer(oracle_chief.OracleServicer):
    """KerasTuner's servicer, noting which worker is alive and reporting each trial."""

    def __init__(self, oracle, roster: _Roster):
        super().__init__(oracle)
        self.roster = roster
        self.lines = queue.SimpleQueue()  # printed by the serve loop (this thread is muted)
        self.reissued = set()  # trial ids already re-issued once
        self.error = None  # what stopped the search, raised by the serve loop

    def GetSpace(self, request, context):  # noqa: N802 (gRPC's names); also the heartbeat
        metadata = dict(context.invocation_metadata())
        if _WORKER_KEY in metadata and not self.roster.seen(metadata[_WORKER_KEY], metadata.get(_INSTANCE_KEY)):
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
            _unlock_after_error(self.oracle)
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
            _unlock_after_error(oracle)
            raise
        hparams.write_trial(tuner.tensorboard_dir, oracle.get_trial(trial.trial_id))
        log(f"worker {worker}: no sign of life for {timeout:.0f} s; {trial_line(oracle.get_trial(trial.trial_id))}")


def _unlock_after_error(oracle) -> None:
    # keras_tuner.synchronized leaves the oracle locked when the call raises; the
    # chief still needs it (to stop cleanly), from another thread.
    if oracle_module.THREADS[oracle] == threading.current_thread().name:
        oracle_module.THREADS[oracle] = None
        oracle_module.LOCKS[oracle].release()


@keras_tuner.synchronized
def _requeue(oracle, trial_id: str) -> None:
    # The retry queue is how KerasTuner itself re-runs an unfinished trial
    # (Oracle.reload puts ongoing trials there); create_trial serves it first.
    oracle._retry_queue.append(trial_id)
    oracle.save()


# --------------------------------------------------------------------------- worker


def run_worker(config, hypermodel, address: str, worker_id: str, strategy: str | None,
               log: Callable[[str], None]) -> None:
    """Runs trials served by the chief at ``address`` until its oracle says the search is done."""
    with worker_session(address, worker_id, log) as heartbeat:
        tuner = make_tuner(config, hypermodel, distribution_strategy(strategy, log))
        pace(tuner, heartbeat)
        try:
            tuner.search(epochs=config.max_epochs, verbose=0)
        except grpc.RpcError as error:
            raise UserError(f"worker {worker_id}: the chief at {address} ended the search "
                            f"({error.details()}); see the chief's output.") from None


def check_data_visible(config) -> None:
    """Workers check the shared decoded cache against the original files: they must see them.

    Raises:
        UserError: If the data path of ``config.json`` is missing on this machine.
    """
    if config.data is not None and not os.path.exists(config.data):
        raise UserError(f"The search's data {config.data} (from {config.run_dir}/config.json) is not "
                        "on this machine: mount it at the same path as on the chief (or copy it "
                        "there with its file times, e.g. rsync -a).")


def wait_for_chief(address: str, timeout: float, log: Callable[[str], None]) -> None:
    """Blocks until the chief at ``address`` serves (it does once the run directory is ready).

    Raises:
        UserError: If it does not within ``timeout`` seconds.
    """
    host, port = parse_address(address)
    log(f"waiting for the chief at {host}:{port} (it serves once config.json, the split and the "
        f"caches are ready; giving up after {timeout:.0f} s)")
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise UserError(f"No chief answered at {host}:{port} within {timeout:.0f} s: start "
                            f"`python cli.py search --chief {address} ...` first, check the address, "
                            "or wait longer with --wait.") from None


@contextlib.contextmanager
def worker_session(address: str, worker_id: str, log: Callable[[str], None]):
    """KerasTuner's worker variables and a heartbeat to the chief, for the block.

    Yields:
        The heartbeat, for :func:`pace`.
    """
    heartbeat = _Heartbeat(address, worker_id, log)
    heartbeat.beat()  # before any trial: the chief knows this instance from the start
    stop = threading.Event()
    thread = threading.Thread(target=heartbeat.run, args=(stop,), name="heartbeat", daemon=True)
    with kerastuner_env(worker_id, address):
        thread.start()
        try:
            yield heartbeat
        finally:
            stop.set()


def pace(tuner, heartbeat: "_Heartbeat") -> None:
    """Makes a worker's tuner check in before each report and pause after an IDLE answer."""
    tuner.oracle = _WorkerClient(tuner.oracle, heartbeat)


class _WorkerClient:
    """KerasTuner's ``OracleClient``, made safe for a worker the chief may have released.

    Before asking for a trial or reporting one it checks in (which exits if the chief
    released this worker: its trial has gone to another), so a worker that was
    suspended or cut off past the timeout cannot report over the re-issued trial.
    It pauses after an IDLE answer: ``BaseTuner.search`` asks again at once (e.g.
    Hyperband waiting for a round), which would flood the chief's one server thread.
    """

    def __init__(self, client, heartbeat: "_Heartbeat"):
        self._client = client
        self._heartbeat = heartbeat

    def __getattr__(self, name):
        return getattr(self._client, name)

    def create_trial(self, tuner_id):
        self._heartbeat.beat()
        trial = self._client.create_trial(tuner_id)
        if trial.status == trial_module.TrialStatus.IDLE:
            time.sleep(_IDLE_PAUSE_SECONDS)
        return trial

    def update_trial(self, trial_id, metrics, step=0):
        self._heartbeat.beat()
        return self._client.update_trial(trial_id, metrics, step=step)

    def end_trial(self, trial):
        self._heartbeat.beat()
        # Sending a trial prints KerasTuner's stray debug lines (see _MutedThreads).
        with contextlib.redirect_stdout(io.StringIO()):
            return self._client.end_trial(trial)


class _Heartbeat:
    """This worker's signs of life to the chief, under an id for this process.

    Ends the process when the chief released the worker or stayed unreachable for
    ``CHIEF_LOST_SECONDS``: a hard exit, because the main thread may sit in an
    ``OracleClient`` call that waits for an absent chief for up to an hour.
    """

    def __init__(self, address: str, worker_id: str, log: Callable[[str], None]):
        host, port = parse_address(address)
        self.address = f"{host}:{port}"
        self.worker_id = worker_id
        self.log = log
        self._metadata = ((_WORKER_KEY, worker_id), (_INSTANCE_KEY, uuid.uuid4().hex))
        self._stub = protos.get_service_grpc().OracleStub(grpc.insecure_channel(self.address))
        self._answered = time.monotonic()

    def beat(self) -> None:
        """One sign of life; exits the process if the chief released this worker."""
        try:
            self._stub.GetSpace(protos.get_service().GetSpaceRequest(), metadata=self._metadata,
                                timeout=4 * HEARTBEAT_SECONDS)
            self._answered = time.monotonic()
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.PERMISSION_DENIED:
                _exit(self.log, f"worker {self.worker_id}: the chief released this worker as silent "
                                "(its trial runs elsewhere); exiting. Start it again to rejoin.")
            if time.monotonic() - self._answered > CHIEF_LOST_SECONDS:
                _exit(self.log, f"worker {self.worker_id}: no answer from the chief at {self.address} "
                                f"for {CHIEF_LOST_SECONDS:.0f} s; exiting. Restart the chief (it "
                                "resumes) and the workers.")

    def run(self, stop: threading.Event) -> None:
        """Beats every ``HEARTBEAT_SECONDS`` until ``stop`` is set."""
        while not stop.wait(HEARTBEAT_SECONDS):
            self.beat()


def _exit(log, message: str) -> None:
    log(message)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)
