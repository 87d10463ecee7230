"""Sharded extraction: processes that fill one activation cache together get one process's arrays.

MobileNet (alpha 0.25) at 32 px with random weights fitted to their own BatchNorm
statistics (see test_activations); the demo data's 90 images in batches of 16, in
shards of one or two batches, or 300 images in the default shards (4 batches of 64).
"""

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cxr_tuner.hypermodels.cutting import cut_layer
from cxr_tuner.hypermodels.registry import BUILT_IN, get_backbone
from cxr_tuner.data import synthetic
from cxr_tuner.search.tuning import activations, cache_plan, extraction
from cxr_tuner.search.engine import dataset
from cxr_tuner.search import run
from cxr_tuner.search.tuning.activations import trial_hypermodel
from cxr_tuner.search.engine.config import load_config, new_config
from cxr_tuner.search.distributed import local
from tests.search.tuning.test_activations import BACKBONE, SIZE, _weights_file

REPO = Path(__file__).resolve().parents[3]
DEPTHS = range(len(get_backbone(BACKBONE).unfreeze_points) + 1)
@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return _weights_file(tmp_path_factory.mktemp("weights") / "w.weights.h5", 0)


def _run_dir(folder: Path, demo_data, weights) -> Path:
    config = new_config(str(folder / "run"), str(demo_data), backbones=(BACKBONE,), image_size=SIZE,
                        weights=weights, batch_size=16, seed=5)
    data = dataset.prepare(config, progress=False)
    data.config.save()
    return data.config.path


@pytest.fixture
def run_dir(tmp_path, demo_data, weights):
    return _run_dir(tmp_path, demo_data, weights)


def _cache(run_dir: Path, folder: Path | None = None, name: str = "test"):
    _, cache = trial_hypermodel(dataset.prepare(load_config(run_dir), progress=False), progress=False)
    cache.folder, cache.extractor = folder or cache.folder, name
    return cache


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, demo_data, weights):
    """Every cut as one process extracts it, in batches of 16."""
    run_dir = _run_dir(tmp_path_factory.mktemp("one"), demo_data, weights)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(activations, "_BATCH", 16)
        cache = _cache(run_dir)
        return [np.array(cache.activations(BACKBONE, depth)) for depth in DEPTHS]


@pytest.fixture
def small_shards(monkeypatch):
    monkeypatch.setattr(activations, "_BATCH", 16)
    monkeypatch.setattr(extraction, "SHARD_BATCHES", 1)


def _assert_equal_to_one_process(cache, expected) -> None:
    for depth, array in zip(DEPTHS, expected):
        assert np.array_equal(cache.activations(BACKBONE, depth), array), f"depth {depth}"
    assert not (cache.entry(BACKBONE) / ".extract").exists()
    assert not list(cache.entry(BACKBONE).glob("*.partial"))


def _reaped() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()  # reaped: its PID names no process now
    return process.pid


class _DiesAtCall:
    """A segment whose process dies (KeyboardInterrupt) at its ``n``-th batch."""

    def __init__(self, n: int):
        self.n, self.calls, self.segment = n, 0, None

    def predict_on_batch(self, batch):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.segment.predict_on_batch(batch)


def test_a_killed_extractors_shard_is_computed_again_and_the_done_ones_kept(run_dir, one_process, monkeypatch):
    monkeypatch.setattr(activations, "_BATCH", 16)
    monkeypatch.setattr(extraction, "SHARD_BATCHES", 2)  # shards of rows 0-31, 32-63, 64-89
    cache = _cache(run_dir)
    real, computed, dying = extraction._compute, [], _DiesAtCall(4)

    def compute(job, entry, segment, inputs, shard, bar):
        computed.append(shard)
        dying.segment = segment
        real(job, entry, dying, inputs, shard, bar)

    monkeypatch.setattr(extraction, "_compute", compute)
    with pytest.raises(KeyboardInterrupt):  # in shard 1, after its first batch
        cache.warm([BACKBONE])
    entry = cache.entry(BACKBONE)
    job = extraction.read_job(entry)
    for cut in job.cuts:  # whatever the dead process left in its shard's rows
        rows = np.memmap(job.partial(entry, cut), dtype="float32", mode="r+", shape=job.shapes[job.cuts.index(cut)])
        rows[32:64] = np.nan
        rows.flush()
    shards = entry / ".extract" / job.token
    (shards / "1.claim").write_text(json.dumps({"host": socket.gethostname(), "pid": _reaped(),
                                                "command": "extraction (killed)"}))
    assert computed == [0, 1] and (shards / "0.done").exists() and not (shards / "1.done").exists()

    said, computed[:] = [], []
    cache.log, dying.n = said.append, 0
    cache.warm([BACKBONE])
    assert computed == [1, 2]  # shard 0 kept, shard 1 computed whole
    assert len(said) == 1 and "taking over shard 1" in said[0] and "is no longer running" in said[0]
    _assert_equal_to_one_process(cache, one_process)


def test_a_shard_another_live_process_holds_is_waited_for_not_taken(run_dir, small_shards, monkeypatch):
    cache = _cache(run_dir)
    entry, spec = cache.entry(BACKBONE), get_backbone(BACKBONE)
    shapes = [(90, *shape) for shape in cache_plan.cut_shapes(cache.image_model, BACKBONE, specs=BUILT_IN)]
    job = extraction.open_job(entry, [cut_layer(spec, d) for d in DEPTHS], None, shapes, "float32", 16)
    claim = entry / ".extract" / job.token / "0.claim"
    claim.write_text(json.dumps({"host": "elsewhere", "pid": 1, "command": "extraction (other)"}))  # fresh
    release = threading.Timer(2.0, claim.unlink)
    release.start()
    started = time.monotonic()
    cache.warm([BACKBONE])  # computes shards 1-5, waits for 0 while its claim is fresh, then takes it
    assert time.monotonic() - started >= 2.0
    assert cache.extraction_record(BACKBONE)["shards"] == {"test": 6}


def test_a_worker_and_the_chief_fill_one_cache_equal_to_one_processs(tmp_path, weights):
    """`cxr-tuner worker` joins the extraction the chief announces (extraction.lock), then waits for it to serve."""
    data = synthetic.write_demo_dataset(tmp_path / "data", n_per_class=100, size=SIZE, seed=1)
    run_dir = _run_dir(tmp_path, data, weights)  # 300 images: shards of rows 0-255 and 256-299
    one = _cache(run_dir, tmp_path / "one")
    expected = [np.array(one.activations(BACKBONE, depth)) for depth in DEPTHS]
    log = tmp_path / "worker.log"
    with open(log, "w") as out:
        worker = subprocess.Popen([sys.executable, "cli.py", "worker", "--chief", local.free_local_address(),
                                   "--run-dir", str(run_dir), "--worker-id", "w1", "--wait", "2"], cwd=REPO,
                                  stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        real = extraction._compute

        def after_the_worker_claims(job, entry, segment, inputs, shard, bar):
            shards, deadline = entry / ".extract" / job.token, time.monotonic() + 200
            while not (shards / "1.claim").exists() and not (shards / "1.done").exists():
                assert worker.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.05)
            real(job, entry, segment, inputs, shard, bar)

        said = []
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(extraction, "_compute", after_the_worker_claims)
            config = load_config(run_dir)
            chief = _cache(run_dir)
            run._extract_with_workers(config, chief, said.append)  # what the chief of a search does
        assert worker.wait(timeout=200) == 1
    finally:
        worker.kill()
    worker_said = log.read_text()
    assert "No chief answered" in worker_said, worker_said  # no chief serves here: only its extraction
    assert "worker w1: joining the chief's activation extraction" in worker_said
    assert chief.extraction_record(BACKBONE)["shards"] == {"chief": 1, "w1": 1}
    assert len(said) == 1 and re.fullmatch(rf"activations of {BACKBONE}: [\d.]+ s \(shards: chief 1, w1 1\)", said[0])
    assert not config.layout.extraction.exists()  # workers arriving later go straight to the trials
    _assert_equal_to_one_process(chief, expected)
    passes = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(extraction, "run", lambda *args: passes.append(args))
        _cache(run_dir).warm([BACKBONE])  # a finished cache is read, not computed again
    assert passes == []
