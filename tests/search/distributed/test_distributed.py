"""Distributed search: a chief and workers as real processes on 127.0.0.1, one killed mid-trial; local workers."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tensorflow as tf
from click.testing import CliRunner
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from cxr_tuner.cli import cli
from cxr_tuner.data.errors import UserError
from cxr_tuner.hypermodels.classifier import OBJECTIVE
from cxr_tuner.search.distributed import local
from cxr_tuner.search.engine.config import new_config
from cxr_tuner.search.engine.layout import RunLayout
from cxr_tuner.search.run import run_search
from tests.conftest import error_line, saved_trials
from tests.search.test_search import _session_hparams

REPO = Path(__file__).resolve().parents[3]
DEADLINE = 240  # seconds: a hard limit for any process of a test, so CI never hangs
WORKER_TIMEOUT = 10  # the chief releases a worker silent this long (heartbeats every 2 s)


class _Processes:
    """Started CLI processes, each logging to a file; whatever is left is killed at the end."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.started = []

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "w")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen([sys.executable, "cli.py", *args], cwd=REPO, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.started.append(process)
        return process

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text()

    def kill_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)


@pytest.fixture
def processes(tmp_path):
    started = _Processes(tmp_path)
    try:
        yield started
    finally:
        started.kill_all()


def _start_chief(processes, data, run_dir, address):
    return processes.start(
        "chief", "search", "--data", str(data), "--run-dir", str(run_dir), "--backbones", "vanilla_cnn",
        "--weights", "none", "--image-size", "32", "--max-epochs", "2", "--factor", "2",
        "--batch-size", "16", "--seed", "3", "--no-retrain", "--chief", address,
        "--worker-timeout", str(WORKER_TIMEOUT))


def _start_worker(processes, run_dir, address, name):
    return processes.start(name, "worker", "--chief", address, "--run-dir", str(run_dir),
                           "--worker-id", name, "--wait", str(DEADLINE))


def _exit_code(process, processes, name, timeout=DEADLINE) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name} still running after {timeout} s:\n{processes.log(name)[-3000:]}")


def _assert_single_machine_format(run_dir: Path, trials: dict) -> None:
    best = json.loads(RunLayout(run_dir).best.read_text())
    assert set(best) == {"objective", "trials", "best", "top", "best_per_backbone", "split_sha256"}
    assert best["objective"] == {"name": OBJECTIVE, "direction": "min"}
    assert best["trials"] == len(trials)
    assert best["best"]["hyperparameters"]["backbone"] == "vanilla_cnn"
    for trial_id in trials:
        hparams = _session_hparams(RunLayout(run_dir).tensorboard / trial_id)
        assert {"backbone", "learning_rate", "tuner/bracket", "tuner/round"} <= set(hparams)
    summary = event_accumulator.EventAccumulator(str(RunLayout(run_dir).tensorboard), size_guidance={"tensors": 0})
    summary.Reload()
    content = summary.PluginTagToContent("hparams")["_hparams_/experiment"]
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content).experiment
    assert OBJECTIVE in [m.name.tag for m in experiment.metric_infos]


def test_a_worker_killed_mid_trial_loses_no_finished_trial_and_a_late_worker_completes_the_search(
        tmp_path, demo_data, processes):
    # Also the plain case (it was its own ~40 s test): a chief and two workers at once, every trial
    # completed, the chief and the worker left exit by themselves, the best trial said.
    run_dir, address = tmp_path / "run", local.free_local_address()
    chief = _start_chief(processes, demo_data, run_dir, address)
    doomed = _start_worker(processes, run_dir, address, "doomed")
    _wait_for(lambda: _issued(processes.log("chief"), "doomed"), processes)
    late = _start_worker(processes, run_dir, address, "late")  # joins a running search
    # Kill it once it has finished a trial and is running the next one.
    _wait_for(lambda: len(_issued(processes.log("chief"), "doomed")) >= 2, processes)
    finished_before = _finished(processes.log("chief"), "doomed")
    held = _issued(processes.log("chief"), "doomed")[-1]
    os.kill(doomed.pid, signal.SIGKILL)

    assert _exit_code(chief, processes, "chief") == 0, processes.log("chief")[-3000:]
    assert _exit_code(late, processes, "late", timeout=60) == 0, processes.log("late")[-3000:]
    trials = saved_trials(run_dir)
    assert {t["status"] for t in trials.values()} == {"COMPLETED"}
    assert finished_before and held not in finished_before
    for trial_id, score in finished_before.items():
        assert round(trials[trial_id]["score"], 4) == score
    assert f"its trial {held} goes to the next worker" in processes.log("chief")
    assert held in _finished(processes.log("chief"), "late")
    _assert_single_machine_format(run_dir, trials)
    assert re.search(r"^best trial \d+ of \d+: ", processes.log("chief"), re.MULTILINE)


def _issued(chief_log: str, worker: str) -> list[str]:
    return re.findall(rf"^trial (\d+) -> worker {worker}$", chief_log, re.MULTILINE)


def _finished(chief_log: str, worker: str) -> dict[str, float]:
    found = re.findall(rf"^trial (\d+) .*: {OBJECTIVE}=([\d.]+) .*\(worker {worker}\)$", chief_log, re.MULTILINE)
    return {trial_id: float(score) for trial_id, score in found}


def _wait_for(condition, processes, timeout=DEADLINE) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end or processes.started[0].poll() is not None:
            pytest.fail(f"gave up waiting; the chief said:\n{processes.log('chief')[-3000:]}")
        time.sleep(0.2)


def test_mirrored_strategy_trains_with_one_replica_on_a_cpu_and_says_so(tmp_path, demo_data):
    lines = []
    config = new_config(str(tmp_path / "run"), str(demo_data), backbones=("vanilla_cnn",), image_size=32,
                        weights="none", tuner="random", max_trials=1, max_epochs=1, batch_size=16)
    best = run_search(config, log=lines.append, strategy="mirrored")
    assert best["best"] is not None
    said = [line for line in lines if line.startswith("--strategy mirrored:")]
    gpus = len(tf.config.list_logical_devices("GPU"))
    assert len(said) == 1 and ("1 replica on the CPU" if not gpus else f"on {gpus} GPUs") in said[0]


def test_worker_errors_are_one_line(tmp_path):
    runner = CliRunner()
    bad = runner.invoke(cli, ["worker", "--chief", "no-port", "--run-dir", str(tmp_path)])
    assert bad.exit_code == 1 and "is not HOST:PORT" in bad.output
    alone = runner.invoke(cli, ["worker", "--chief", local.free_local_address(), "--run-dir", str(tmp_path),
                                "--wait", "1"])
    error_line(alone, "No chief answered")
    named = runner.invoke(cli, ["worker", "--chief", local.free_local_address(), "--run-dir", str(tmp_path),
                                "--worker-id", "chief-2"])
    assert named.exit_code == 1 and "without the word 'chief'" in named.output


def _local_search(processes, data, run_dir, workers: int):
    return processes.start(
        f"local{workers}", "search", "--data", str(data), "--run-dir", str(run_dir), "--backbones", "vanilla_cnn",
        "--weights", "none", "--image-size", "32", "--max-epochs", "2", "--factor", "2",
        "--batch-size", "16", "--seed", "3", "--no-retrain", "--workers", str(workers))


def test_local_workers_run_every_trial_and_exit_with_the_search(tmp_path, demo_data, processes):
    run_dir = tmp_path / "run"
    search = _local_search(processes, demo_data, run_dir, 2)
    assert _exit_code(search, processes, "local2") == 0, processes.log("local2")[-3000:]
    said = processes.log("local2")
    assert f"2 local workers, {max(1, local.available_cores() // 2)} thread" in said  # a share of the cores each
    trials = saved_trials(run_dir)
    assert {t["status"] for t in trials.values()} == {"COMPLETED"}
    assert len(re.findall(rf"^trial \d+ .*{OBJECTIVE}=.*\(worker local-[12]\)$", said, re.MULTILINE)) == len(trials)
    _assert_single_machine_format(run_dir, trials)
    assert re.search(r"^best trial \d+ of \d+: ", said, re.MULTILINE)
    for name in ("local-1", "local-2"):  # each was told the search is done, and exited
        assert "the search is done" in (RunLayout(run_dir).worker_logs / f"{name}.log").read_text()


def test_local_workers_that_all_fail_stop_the_search_with_one_line(tmp_path):
    failing = {name: subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"]) for name in ("a", "b")}
    lines = []
    helpers = local.LocalWorkers("127.0.0.1:1", failing, tmp_path, lines.append)
    for process in failing.values():
        process.wait(timeout=30)
    with pytest.raises(UserError, match="Every local worker stopped before the search was done"):
        helpers.check()
    assert lines == [f"worker {name} stopped (exit status 3); see {tmp_path / f'{name}.log'}" for name in "ab"]


def test_local_workers_and_a_chief_address_are_one_or_the_other(tmp_path):
    result = CliRunner().invoke(cli, ["search", "--run-dir", str(tmp_path / "run"), "--workers", "2",
                                      "--chief", local.free_local_address()])
    error_line(result, "--workers starts workers on this machine")
