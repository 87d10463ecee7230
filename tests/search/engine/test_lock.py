"""One writer per run directory: a second writer is refused at once, a dead holder's lock is taken over."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cxr_tuner.data.errors import UserError
from cxr_tuner.search.engine import lock
from cxr_tuner.search.engine.layout import RunLayout
from tests.conftest import FAST_SEARCH, error_line, run_cli

REPO = Path(__file__).resolve().parents[3]


def _reaped() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()  # reaped: its PID names no process now
    return process.pid


def _write_lock(run_dir: Path, **holder) -> Path:
    path = RunLayout(run_dir).lock
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"command": "search", "since": "earlier", **holder}))
    return path


def test_a_second_search_is_refused_at_once_and_the_first_finishes_unharmed(tmp_path, demo_data):
    run_dir = tmp_path / "run"
    flags = [*FAST_SEARCH, "--max-epochs", "2"]  # 5 trials after it takes the lock: long enough to be caught while it runs
    first = subprocess.Popen([sys.executable, "cli.py", "search", "--data", str(demo_data), "--run-dir",
                              str(run_dir), *flags], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        deadline = time.monotonic() + 120
        while not RunLayout(run_dir).lock.is_file():
            assert first.poll() is None and time.monotonic() < deadline, "the first search never took the lock"
            time.sleep(0.2)
        started = time.monotonic()
        second = run_cli("search", "--data", demo_data, "--run-dir", run_dir, *flags)
        assert time.monotonic() - started < 10
        line = error_line(second, "is in use by `search`", f"PID {first.pid}", socket.gethostname())
        assert "another --run-dir" in line
        output, _ = first.communicate(timeout=600)
    finally:
        first.kill()
    assert first.returncode == 0, output
    assert "best trial" in output
    assert json.loads(RunLayout(run_dir).best.read_text())["best"] is not None
    assert not RunLayout(run_dir).lock.exists()  # released


def test_a_lock_whose_process_is_gone_is_taken_over_and_said_so(tmp_path, demo_data):
    run_dir = tmp_path / "run"
    _write_lock(run_dir, host=socket.gethostname(), pid=_reaped())
    result = run_cli("search", "--data", demo_data, "--run-dir", run_dir, *FAST_SEARCH)
    assert result.exit_code == 0, result.output
    assert "taking over the lock" in result.output and "is no longer running" in result.output
    assert not RunLayout(run_dir).lock.exists()


def test_another_hosts_lock_counts_as_gone_only_without_a_heartbeat(tmp_path):
    path = _write_lock(tmp_path, host="elsewhere", pid=1)
    with pytest.raises(UserError, match="in use by `search` .host elsewhere, PID 1"):
        with lock.run_lock(tmp_path, "retrain", log=lambda line: None):
            pass
    old = time.time() - lock.STALE_AFTER - 5
    os.utime(path, (old, old))
    said = []
    with lock.run_lock(tmp_path, "retrain", log=said.append):
        assert json.loads(path.read_text())["pid"] == os.getpid()
        with lock.run_lock(tmp_path, "evaluate", log=said.append):  # the same process may nest stages
            pass
        assert path.is_file()
    assert len(said) == 1 and "no heartbeat" in said[0]
    assert not path.exists()
