"""Several trials at once on one machine: local workers of KerasTuner's distributed mode.

A trial on cached activations spends much of its time in single-threaded Python
(tracing its new model's train and test steps, KerasTuner's and Keras' bookkeeping)
while the other cores wait. ``cxr-tuner search --workers N`` makes this process the
chief of a distributed search (data, caches and oracle here, then the retrain) and
starts N ``cxr-tuner worker`` processes on this machine, each computing on its share
of the cores: one trial's tracing overlaps another's arithmetic (measurements:
docs/performance.md).

Reproducibility: one process (the default, ``--workers 1``) runs the same trial
sequence for the same ``--seed``. With several workers, KerasTuner's Hyperband hands
out trials in the order workers ask, so trial numbers, and the configurations its
later brackets draw while earlier rounds are still running, can differ between
runs, as in any distributed search; and a worker computes on fewer threads than one
process, which changes the float summation order and so, rarely, a score.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

from cxr_tuner.data.errors import UserError
from cxr_tuner.search.distributed import pinning
from cxr_tuner.search.engine.devices import available_cores
from cxr_tuner.search.engine.layout import RunLayout

"""Under the run directory: one log per local worker (its trial lines and errors)."""




class LocalWorkers:
    """Worker processes started by :func:`local_workers`, serving the chief at ``address``."""

    def __init__(self, address: str, processes: dict[str, subprocess.Popen], logs: Path,
                 log: Callable[[str], None]):
        self.address = address
        self.processes = processes
        self.logs = logs
        self._log = log
        self._reported = set()

    def check(self) -> None:
        """Reports workers that failed; raises once none is left to run the remaining trials.

        Raises:
            UserError: If every worker has exited and one of them failed.
        """
        for name, process in self.processes.items():
            if process.poll() not in (None, 0) and name not in self._reported:
                self._reported.add(name)
                self._log(f"worker {name} stopped (exit status {process.returncode}); "
                          f"see {self.logs / f'{name}.log'}")
        if all(p.poll() is not None for p in self.processes.values()) and self._reported:
            raise UserError(
                f"Every local worker stopped before the search was done; their logs in {self.logs} "
                "say why. Finished trials are kept: fix that and run the same command to resume.")


@contextlib.contextmanager
def local_workers(run_dir: Path, count: int, log: Callable[[str], None],
                  strategy: str | None = None) -> Iterator[LocalWorkers]:
    """Starts ``count`` workers on this machine for a chief on a free local port.

    The workers join the chief's activation extraction once it has prepared the
    data, wait for it to serve, run trials until it says the search is done and exit; any still running when the
    block ends (an error, Ctrl-C) are stopped.
    """
    address = free_local_address()
    threads = max(1, available_cores() // count)
    layout = RunLayout(run_dir)
    logs = layout.worker_logs
    logs.mkdir(parents=True, exist_ok=True)
    processes, done = {}, False
    gpus = pinning.visible_gpus()
    if gpus:
        pinning.share_gpus_with_workers()
    try:
        for i in range(count):
            name = layout.worker_log(i + 1).stem
            command = [sys.executable, "-u", "-m", "cxr_tuner", "worker", "--chief", address, "--run-dir", str(run_dir),
                       "--worker-id", name, "--threads", str(threads)]
            if strategy not in (None, "none"):
                command += ["--strategy", strategy]
            env = pinning.worker_environment(i, count, gpus, os.environ, strategy)
            with open(layout.worker_log(i + 1), "w") as out:
                processes[name] = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                                   stdin=subprocess.DEVNULL, env=env)
            if gpus:
                log(f"worker {name}: GPU {env['CUDA_VISIBLE_DEVICES']}"
                    + (" (shared, memory growth)" if "TF_FORCE_GPU_ALLOW_GROWTH" in env else ""))
        log(f"{count} local workers, {threads} thread{'s' * (threads > 1)} each (logs in {logs})")
        yield LocalWorkers(address, processes, logs, log)
        done = True
    finally:
        _stop(processes.values(), patience=30 if done else 0)


def _stop(processes, patience: float) -> None:
    """Waits ``patience`` seconds for each worker to exit (told the search is done, it does), then stops it."""
    for process in processes:
        try:
            process.wait(timeout=patience)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def free_local_address() -> str:
    """``127.0.0.1:PORT`` with a port free now (the chief binds it later; a clash is one clear error)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def check_count(workers: int, chief: str | None) -> None:
    """``--workers`` starts the workers of a search this process serves itself."""
    if workers > 1 and chief:
        raise UserError("--workers starts workers on this machine for a search it serves to them; "
                        "with --chief, start workers with `cxr-tuner worker` (on any machine) instead.")
