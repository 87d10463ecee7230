"""One writer per run directory: a lock file naming its holder, kept alive by a heartbeat.

The search (or a distributed search's chief), retrain, evaluate and export hold
it while they write; distributed workers write only their own trial files, as
KerasTuner's mode expects, and read-only commands (predict, data audit,
TensorBoard) need none. A holder that is gone is detected and its lock taken
over: on this host by its PID, on another host (a shared filesystem) by a
heartbeat older than `STALE_AFTER` seconds. The same claim files (`take`, `kept`)
share out the shards of a sharded activation extraction (:mod:`search.tuning.extraction`).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from cxr_tuner.data import files
from cxr_tuner.data.errors import UserError
from cxr_tuner.search.engine.layout import RunLayout

HEARTBEAT_SECONDS = 10.0
STALE_AFTER = 60.0  # seconds without a heartbeat after which another host's holder counts as gone
_ATTEMPTS = 20  # rounds of taking a claim while other takers replace it


@contextlib.contextmanager
def run_lock(run_dir, command: str, log: Callable[[str], None] = print) -> Iterator[None]:
    """Holds the run directory's lock for ``command`` (re-entrant within one process).

    Raises:
        UserError: If another live process holds it, naming that process and what to do.
    """
    path = RunLayout(run_dir).lock
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = _holder(path)
    if holder is not None and _is_me(holder):
        yield  # the whole job holds it already (search, then retrain, evaluate, export)
        return
    holder = take(path, command, log, f"the lock of {path.parent}")
    if holder == {}:
        raise UserError(
            f"{path} is unreadable (not written by cxr-tuner, or damaged); it counts as abandoned "
            f"{STALE_AFTER:.0f} s after its last change. If no process uses {path.parent}, delete it.")
    if holder is not None:
        raise UserError(
            f"{path.parent} is in use by `{holder.get('command', '?')}` (host {holder.get('host', '?')}, "
            f"PID {holder.get('pid', '?')}, since {holder.get('since', '?')}); wait for it to finish or "
            f"use another --run-dir. If that process is gone for sure, delete {path}.")
    with kept(path):
        yield


def take(path: Path, command: str, log: Callable[[str], None] | None = None, what: str | None = None) -> dict | None:
    """Creates the claim file ``path`` naming this process, taking it over from a holder that is gone.

    The run lock is one such claim; the shards of a sharded activation extraction
    are others (:mod:`search.tuning.extraction`). A claim is linked into place whole, and a
    gone holder's claim is replaced under a takeover claim that names that very file,
    so of several processes that judge it gone at once exactly one takes it.

    Returns:
        None when this process holds it now, else the content of the live holder's claim.
    """
    for attempt in range(_ATTEMPTS):
        if files.linked(path, _claim(command)):
            return None
        seen = _read(path)
        if seen is None:
            continue  # released meanwhile
        identity, holder = seen
        mine = _is_me(holder)  # left by an error in this process: take it again
        gone = None if mine else _gone_reason(path, holder)
        if not mine and gone is None:
            return holder
        if _replace(path, identity, command):
            if gone is not None and log is not None:
                log(f"taking over {what or path}: its holder ({holder.get('command', '?')}, host "
                    f"{holder.get('host', '?')}, PID {holder.get('pid', '?')}) {gone}")
            return None
        time.sleep(0.05 * (attempt + 1))  # another taker is replacing it: read the winner's claim next
    raise UserError(f"Could not take {path}: other processes keep taking it; try again.")


def _replace(path: Path, identity: tuple, command: str) -> bool:
    """Replaces the claim ``path`` by this process's if it is still the file ``identity``; whether it did.

    Only the holder of the takeover claim of that file (named by its inode) may replace it,
    and it checks the file is still the one judged gone: a slower taker that gets the
    takeover claim afterwards finds another file there and leaves it.
    """
    takeover = path.with_name(f"{path.name}.takeover-{identity[0]}")
    if take(takeover, "takeover") is not None:
        return False
    try:
        if (_read(path) or (None,))[0] != identity:
            return False
        with files.replaced(path) as out:
            out.write(_claim(command))
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            takeover.unlink()


def live_holder(path: Path) -> dict | None:
    """The content of the claim ``path`` while its holder may be alive; None if none or gone."""
    holder = _holder(path)
    return holder if holder is not None and _gone_reason(path, holder) is None else None


@contextlib.contextmanager
def kept(path: Path) -> Iterator[None]:
    """Keeps this process's claim ``path`` alive with a heartbeat for the block, then releases it."""
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(path, stop), daemon=True, name="claim-heartbeat")
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        with contextlib.suppress(FileNotFoundError):
            if _is_me(_holder(path) or {}):
                path.unlink()


def _claim(command: str) -> str:
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "command": command,
                       "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}) + "\n"


def _read(path: Path) -> tuple[tuple, dict] | None:
    """((inode, content), holder) of the claim ``path``, None if there is none.

    An unreadable claim (not written by this module, which links claims whole) reads as
    ``{}``, a holder that counts as gone once the file is `STALE_AFTER` seconds old.
    """
    try:
        with open(path, "rb") as handle:
            inode, text = os.fstat(handle.fileno()).st_ino, handle.read()
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        holder = {}
    return (inode, text), holder if isinstance(holder, dict) else {}


def _holder(path: Path) -> dict | None:
    """The claim's content (see `_read`); None if there is none."""
    seen = _read(path)
    return None if seen is None else seen[1]


def _is_me(holder: dict) -> bool:
    return holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid()


def _gone_reason(path: Path, holder: dict) -> str | None:
    """Why the holder counts as gone, or None while it may be alive."""
    if "pid" in holder and "host" in holder and holder["host"] == socket.gethostname():
        return None if _pid_alive(int(holder["pid"])) else "is no longer running"
    try:
        silent = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return "released it"
    if silent <= STALE_AFTER:
        return None
    return f"has sent no heartbeat for {silent:.0f} s" if "pid" in holder else f"left it unreadable {silent:.0f} s ago"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def _heartbeat(path: Path, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_SECONDS):
        with contextlib.suppress(OSError):
            os.utime(path)
