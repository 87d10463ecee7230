"""Distributed search on KerasTuner's own chief/worker mode, with workers allowed to die.

KerasTuner (1.4.8) does the distribution: the chief holds the oracle and answers the
workers' ``OracleClient`` over gRPC; workers run trials. What it lacks, and
:mod:`search.distributed.chief` and :mod:`search.distributed.worker` add around it:

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

This module holds what both sides share: addresses, worker ids, those variables,
resuming across modes and the strategy a trial trains under.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Callable

from cxr_tuner.data.errors import UserError

CHIEF_ID = "chief"
"""The chief's tuner id: KerasTuner treats any id containing "chief" as the chief."""
LOCAL_ID = "tuner0"  # KerasTuner's tuner id without distribution
WORKER_KEY, INSTANCE_KEY = "x-cxr-worker", "x-cxr-instance"  # gRPC metadata keys are lowercase
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
    other = tuner_dir / (f"{CHIEF_ID}.json" if tuner_id == LOCAL_ID else f"{LOCAL_ID}.json")
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
