"""A worker of a distributed search: runs the trials its chief serves, with a heartbeat.

See :mod:`search.distributed.protocol` for what this adds to KerasTuner's chief/worker mode.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
import time
import uuid
from typing import Callable

import grpc
from keras_tuner.engine import trial as trial_module

from cxr_tuner.data.errors import UserError
from cxr_tuner.hypermodels.compat import keras_tuner_compat
from cxr_tuner.search.distributed.protocol import INSTANCE_KEY, WORKER_KEY, distribution_strategy, kerastuner_env, parse_address
from cxr_tuner.search.tuning.tuner import make_tuner

HEARTBEAT_SECONDS = 2.0
CHIEF_LOST_SECONDS = 120.0
"""A worker gives up when the chief has not answered for this long."""
_IDLE_PAUSE_SECONDS = 1.0


def serve_trials(config, hypermodel, address: str, worker_id: str, strategy: str | None,
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


def wait_for_chief(address: str, timeout: float, log: Callable[[str], None],
                   extracting: Callable[[], bool] | None = None) -> bool:
    """Blocks until the chief at ``address`` serves (it does once the run directory is ready).

    Args:
        extracting: Tells whether the chief is extracting activations now: then this
            returns at once, for the worker to join in (and wait again after).

    Returns:
        True once the chief serves; False if ``extracting()`` came first.

    Raises:
        UserError: If neither happens within ``timeout`` seconds.
    """
    host, port = parse_address(address)
    log(f"waiting for the chief at {host}:{port} (it serves once config.json, the split and the "
        f"caches are ready; giving up after {timeout:.0f} s)")
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        ready = grpc.channel_ready_future(channel)
        try:
            while True:
                if extracting is not None and extracting():
                    return False
                try:
                    ready.result(timeout=max(0.0, min(_IDLE_PAUSE_SECONDS, deadline - time.monotonic())))
                    return True
                except grpc.FutureTimeoutError:
                    if time.monotonic() >= deadline:
                        raise UserError(f"No chief answered at {host}:{port} within {timeout:.0f} s: start "
                                        f"`cxr-tuner search --chief {address} ...` first, check the address, "
                                        "or wait longer with --wait.") from None
        finally:
            if ready.cancel():
                # gRPC's thread polling the channel stops within 0.2 s of the last subscriber
                # leaving; closing the channel before that makes it print a traceback.
                time.sleep(0.3)


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
        # Sending a trial prints KerasTuner's stray debug lines (see _MutedThreads in search.distributed.chief).
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
        self._metadata = ((WORKER_KEY, worker_id), (INSTANCE_KEY, uuid.uuid4().hex))
        self._stub = keras_tuner_compat.oracle_stub(grpc.insecure_channel(self.address))
        self._answered = time.monotonic()

    def beat(self) -> None:
        """One sign of life; exits the process if the chief released this worker."""
        try:
            self._stub.GetSpace(keras_tuner_compat.get_space_request(), metadata=self._metadata,
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
