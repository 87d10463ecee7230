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


_RACE = """
import sys, time
from pathlib import Path
from cxr_tuner.search.engine import lock
path, start = Path(sys.argv[1]), float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
held = lock.take(path, "racer") is None
print("held" if held else "refused", flush=True)
if held:
    time.sleep(1.5)  # holds it while the other taker decides
"""


def _race(path: Path) -> list[str]:
    """Two processes take ``path`` at the same instant; what each says."""
    start = time.time() + 1.5  # both have imported the lock module by then
    racers = [subprocess.Popen([sys.executable, "-c", _RACE, str(path), str(start)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [racer.communicate(timeout=120) for racer in racers]
    assert all(racer.returncode == 0 for racer in racers), [err for _, err in outputs]
    return sorted(out.strip() for out, _ in outputs)


def test_two_takers_of_a_stale_lock_never_both_hold_it(tmp_path):
    for round_ in range(3):
        path = _write_lock(tmp_path / str(round_), host=socket.gethostname(), pid=_reaped())
        assert _race(path) == ["held", "refused"]
        assert not list(path.parent.glob("run.lock.*"))  # no takeover or temporary file left


def test_a_fresh_empty_lock_is_not_taken_over_and_an_old_one_is(tmp_path):
    path = RunLayout(tmp_path).lock
    path.write_text("")  # as a holder of an earlier version between creating and writing it
    assert _race(path) == ["refused", "refused"]
    with pytest.raises(UserError, match="is unreadable"):
        with lock.run_lock(tmp_path, "search", log=lambda line: None):
            pass
    old = time.time() - lock.STALE_AFTER - 5
    os.utime(path, (old, old))
    said = []
    assert lock.take(path, "search", said.append) is None
    assert json.loads(path.read_text())["pid"] == os.getpid() and "left it unreadable" in said[0]


def test_a_lock_is_never_seen_half_written(tmp_path):
    path = tmp_path / "claim"
    stop = time.monotonic() + 2
    reader = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom pathlib import Path\np = Path(sys.argv[1]); seen = set()\n"
        "end = time.monotonic() + 2\nwhile time.monotonic() < end:\n"
        "    try: seen.add(p.read_text()[:1])\n    except FileNotFoundError: pass\nprint(sorted(seen))"),
        str(path)], stdout=subprocess.PIPE, text=True)
    while time.monotonic() < stop:
        assert lock.take(path, "writer") is None
        path.unlink()
    out, _ = reader.communicate(timeout=30)
    assert "''" not in out and "'{'" in out, out
