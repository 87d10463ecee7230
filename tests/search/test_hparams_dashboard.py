"""TensorBoard's HParams dashboard, asked through TensorBoard's own HTTP API (one row per trial) and seen in
headless Chromium (the columns it shows first)."""

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from cxr_tuner.search.distributed.local import free_local_address
from cxr_tuner.search.engine.config import new_config
from cxr_tuner.search.run import run_search

HEADERS = {"Content-Type": "application/json", "X-XSRF-Protected": "1"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def searched_run(tmp_path_factory, demo_data):
    """A 2-epoch search at 32 px of both kinds of backbone: vanilla_cnn from scratch, mobilenet_025 pretrained
    (so its trials have an unfreeze depth); ~15 s."""
    run_dir = tmp_path_factory.mktemp("dashboard") / "run"
    config = new_config(str(run_dir), str(demo_data), backbones=("vanilla_cnn", "mobilenet_025"), image_size=32,
                        max_epochs=2, factor=2, batch_size=16, seed=1)
    run_search(config, log=lambda line: None)
    return run_dir


@pytest.fixture(scope="module")
def tensorboard(searched_run):
    """A TensorBoard serving the searched run's tensorboard/ on a free local port; stopped afterwards."""
    address = free_local_address()
    host, port = address.split(":")
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(searched_run / "tensorboard"),
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
        tensorboard, searched_run):
    experiment = _post(tensorboard, "experiment", {"experimentName": ""})
    assert experiment["metricInfos"][0]["name"]["tag"] == "val_weighted_loss"
    # HParams names (the sessions' keys) by the hyperparameter each column is headed with.
    names = {info["displayName"]: info["name"] for info in experiment["hparamInfos"]}
    assert {"backbone", "unfreeze_depth", "dropout", "learning_rate", "head_depth", "tuner/bracket",
            "tuner/round"} <= set(names)

    groups = _post(tensorboard, "session_groups", {
        "experimentName": "", "startIndex": 0, "sliceSize": 1000,
        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
        "colParams": [{"hparam": n} for n in sorted(names.values())] + [{"metric": {"tag": "val_weighted_loss"}}]})
    trials = _trials(searched_run)
    completed = {t["trial_id"]: t for t in trials if t["status"] == "COMPLETED"}
    assert completed and groups["totalSize"] == len(trials)
    by_name = {g["name"]: g for g in groups["sessionGroups"]}
    for trial_id, trial in completed.items():
        group = by_name[trial_id]
        values = trial["hyperparameters"]["values"]
        assert group["hparams"][names["dropout"]] == pytest.approx(values["dropout"])
        assert group["hparams"][names["backbone"]] == values["backbone"]
        assert group["hparams"][names["learning_rate"]] == pytest.approx(values["learning_rate"])
        if values["backbone"] == "mobilenet_025":
            assert group["hparams"][names["unfreeze_depth"]] == values["unfreeze_depth"]
        (objective,) = [m["value"] for m in group["metricValues"] if m["name"]["tag"] == "val_weighted_loss"]
        assert objective == pytest.approx(trial["score"], rel=1e-5)


def _trials(run_dir):
    return [json.loads(p.read_text()) for p in sorted((run_dir / "tuner").glob("trial_*/trial.json"))]


class _Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: it reads
    commands on descriptor 3 and answers on 4, each message JSON ended by a NUL byte); no package needed."""

    def __init__(self, profile):
        to_chromium, self._commands = os.pipe()
        self._answers, from_chromium = os.pipe()

        def at_3_and_4():  # in the child, before exec: its ends of the pipes where Chromium looks for them
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_chromium, from_chromium)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--remote-debugging-pipe", f"--user-data-dir={profile}", "--window-size=1600,1000", "about:blank"],
            close_fds=False, preexec_fn=at_3_and_4, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chromium)
        os.close(from_chromium)
        self._sent, self._unread = 0, b""

    def send(self, method, session=None, **params):
        """Sends one command (to the page of ``session``, else to the browser) and returns its result."""
        self._sent += 1
        message = {"id": self._sent, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:  # events and other answers come in between: skip them
            while b"\0" not in self._unread:
                chunk = os.read(self._answers, 1 << 16)
                if not chunk:
                    raise RuntimeError("Chromium closed its DevTools pipe")
                self._unread += chunk
            raw, self._unread = self._unread.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._sent:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]

    def open(self, url) -> str:
        """Opens ``url`` in a new page; returns the session that talks to it."""
        target = self.send("Target.createTarget", url=url)["targetId"]
        return self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def evaluate(self, session, expression):
        return self.send("Runtime.evaluate", session, expression=expression, returnByValue=True)["result"].get("value")

    def close(self):
        self.process.kill()  # a test browser: nothing to flush
        self.process.wait(timeout=30)
        os.close(self._commands)
        os.close(self._answers)


# The HParams table's column heads as the page lays them out, left to right (the dashboard nests its
# parts in shadow roots); null until the table has rows.
_TABLE_HEADS = """(() => {
  const found = [];
  const walk = root => root.querySelectorAll('*').forEach(e => { found.push(e); if (e.shadowRoot) walk(e.shadowRoot); });
  walk(document);
  const table = found.find(e => e.localName === 'tf-hparams-table-view');
  const grid = table && table.shadowRoot && table.shadowRoot.querySelector('vaadin-grid');
  const heads = grid ? [...grid.querySelectorAll('.table-header')] : [];
  const rows = grid ? grid.querySelectorAll('vaadin-grid-cell-content').length - heads.length : 0;
  if (!heads.length || rows <= 0) return null;
  return heads.map(h => [h.getBoundingClientRect().left, h.textContent.trim()]).sort((a, b) => a[0] - b[0]).map(h => h[1]);
})()"""


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (Debian: apt-get install chromium)")
def test_hparams_table_shows_backbone_unfreeze_depth_learning_rate_dropout_and_head_depth_first(
        tensorboard, tmp_path):
    browser = _Chromium(tmp_path / "profile")
    try:
        page = browser.open(f"{tensorboard}/#hparams")
        deadline, heads = time.monotonic() + 90, None
        while heads is None and time.monotonic() < deadline:
            time.sleep(0.5)
            heads = browser.evaluate(page, _TABLE_HEADS)
    finally:
        browser.close()
    assert heads, "the HParams table showed no rows within 90 s"
    # Trial ID and Show Metrics, then the five hyperparameters shown until one ticks more, then the metrics.
    assert heads[2:7] == ["backbone", "unfreeze_depth", "learning_rate", "dropout", "head_depth"], heads
    assert heads[7] == "class-weighted validation loss", heads
