"""TensorBoard's HParams dashboard, asked through TensorBoard's own HTTP API: one row per trial."""

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from cxr_tuner.search.distributed.local import free_local_address

HEADERS = {"Content-Type": "application/json", "X-XSRF-Protected": "1"}


@pytest.fixture(scope="module")
def tensorboard(retrained_run):
    """A TensorBoard serving the searched run's tensorboard/ on a free local port; stopped afterwards."""
    address = free_local_address()
    host, port = address.split(":")
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(retrained_run / "tensorboard"),
                               "--host", host, "--port", port, "--load_fast", "false"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield f"http://{address}"
    finally:
        server.kill()  # a test server: nothing to flush
        server.wait(timeout=30)


def _post(base, route, body, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        request = urllib.request.Request(f"{base}/data/plugin/hparams/{route}", json.dumps(body).encode(), HEADERS)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                answer = json.loads(response.read())
            if answer and (route != "experiment" or answer.get("hparamInfos")):
                return answer
        except (urllib.error.URLError, ConnectionError):
            pass  # not serving yet, or not done reading the logs
        if time.monotonic() > deadline:
            raise TimeoutError(f"TensorBoard at {base} gave no {route} within {timeout} s")
        time.sleep(0.5)


def test_hparams_dashboard_lists_every_trial_with_its_hyperparameters_and_the_objective_first(
        tensorboard, retrained_run):
    experiment = _post(tensorboard, "experiment", {"experimentName": ""})
    assert experiment["metricInfos"][0]["name"]["tag"] == "val_weighted_loss"
    names = {info["name"] for info in experiment["hparamInfos"]}
    assert {"backbone", "dropout", "learning_rate", "head_depth", "tuner/bracket", "tuner/round"} <= names

    groups = _post(tensorboard, "session_groups", {
        "experimentName": "", "startIndex": 0, "sliceSize": 1000,
        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
        "colParams": [{"hparam": n} for n in sorted(names)] + [{"metric": {"tag": "val_weighted_loss"}}]})
    trials = _trials(retrained_run)
    completed = {t["trial_id"]: t for t in trials if t["status"] == "COMPLETED"}
    assert completed and groups["totalSize"] == len(trials)
    by_name = {g["name"]: g for g in groups["sessionGroups"]}
    for trial_id, trial in completed.items():
        group = by_name[trial_id]
        assert group["hparams"]["dropout"] == pytest.approx(trial["hyperparameters"]["values"]["dropout"])
        assert group["hparams"]["backbone"] == trial["hyperparameters"]["values"]["backbone"]
        (objective,) = [m["value"] for m in group["metricValues"] if m["name"]["tag"] == "val_weighted_loss"]
        assert objective == pytest.approx(trial["score"], rel=1e-5)


def _trials(run_dir):
    return [json.loads(p.read_text()) for p in sorted((run_dir / "tuner").glob("trial_*/trial.json"))]
