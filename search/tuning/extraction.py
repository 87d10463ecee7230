"""Sharded extraction: every process that needs a pass of a backbone computes a share of it.

A pass (the missing cuts of one activation-cache entry, from the images or from a deeper
cached cut) is a job in the entry's ``.extract/`` folder: ``job.json`` names its cuts,
source, shapes and a token, and its output files ``<cut>.<f32|f16>.<token>.partial`` are
preallocated whole before ``job.json`` appears. The rows are cut into shards of whole
extraction batches (so every row comes out of the same batch as in one process, and the
arrays are bit-identical). A process claims a shard with ``<token>/<shard>.claim``, the
claim file of :mod:`search.engine.lock` (its holder, a heartbeat), writes the shard's rows into
the partial files and then ``<token>/<shard>.done``, and takes the next free shard. A
claim whose holder is gone (dead PID on this host, no heartbeat from another) is taken
over and its shard computed again from its first row; a shard without a done marker is
never used. Whoever finds every shard done finalizes under ``<token>/final.claim``:
renames the partial files, writes each cut's ``.json`` (last, as one process did) and
removes ``.extract/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from cxr_tuner.data import files
from cxr_tuner.data.errors import UserError
from cxr_tuner.search.engine import lock

SHARD_BATCHES = 4  # batches per shard: small enough to share out, large enough to cost nothing to claim
SUFFIX = {"float32": "f32", "float16": "f16"}
_POLL_SECONDS = 0.5
_JOB = "job.json"


@dataclass(frozen=True)
class Job:
    """One pass over the rows of an entry, shared by the processes that need it."""

    cuts: tuple
    source: str | None
    shapes: tuple  # per cut, (rows, *per-row shape)
    dtype: str
    batch: int
    token: str
    created: float  # time.time() when the job began, for the extraction's seconds

    @property
    def rows(self) -> int:
        return self.shapes[0][0]

    @property
    def shards(self) -> range:
        return range(-(-self.rows // (self.batch * SHARD_BATCHES)))

    def bounds(self, shard: int) -> tuple[int, int]:
        start = shard * self.batch * SHARD_BATCHES
        return start, min(self.rows, start + self.batch * SHARD_BATCHES)

    def partial(self, entry: Path, cut: str) -> Path:
        return entry / f"{cut}.{SUFFIX[self.dtype]}.{self.token}.partial"


def process_name() -> str:
    """``HOST-PID``: who computed a shard, unless a worker id is given."""
    return f"{socket.gethostname()}-{os.getpid()}"


def read_job(entry: Path) -> Job | None:
    """The job in progress in ``entry``, or None."""
    try:
        content = json.loads((entry / ".extract" / _JOB).read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # written whole: missing, or not this format
        return None
    return Job(**{**content, "cuts": tuple(content["cuts"]),
                  "shapes": tuple(tuple(shape) for shape in content["shapes"])})


def open_job(entry: Path, cuts: list[str], source: str | None, shapes: list[tuple], dtype: str,
             batch: int) -> Job | None:
    """Starts the job of ``cuts`` from ``source``, or returns the one already in progress.

    None when the cuts were finished meanwhile by another process (look again).
    """
    folder = entry / ".extract"
    job = Job(tuple(cuts), source, tuple(tuple(s) for s in shapes), dtype, batch, uuid.uuid4().hex, time.time())
    try:
        (folder / job.token).mkdir(parents=True)
        for cut, shape in zip(cuts, job.shapes):
            with open(job.partial(entry, cut), "wb") as out:
                out.truncate(int(np.prod(shape)) * np.dtype(dtype).itemsize)  # preallocated, sparse
        draft = folder / f".{job.token}.json"
        files.write_json(draft, asdict(job))
        try:
            os.link(draft, folder / _JOB)  # atomic and exclusive: one job per entry at a time
        finally:
            draft.unlink()
    except (FileExistsError, FileNotFoundError):  # another's job, or removed by its finalizer: look again
        _remove(entry, job)
        return read_job(entry)
    if any((entry / f"{cut}.json").is_file() for cut in cuts):
        # Another process finished these cuts after this one found them missing.
        (folder / _JOB).unlink(missing_ok=True)
        _remove(entry, job)
        return None
    for stale in [*entry.glob("*.partial"), *folder.iterdir()]:  # left by killed jobs (their job.json is gone)
        if job.token not in stale.name and stale.name != _JOB:
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)
    return job


def run(job: Job, entry: Path, segment, inputs, key: dict, label, name: str,
        log: Callable[[str], None] | None = None) -> None:
    """Computes free shards of ``job`` with ``segment`` until every shard is done, then finalizes.

    Returns early, with nothing left to do, when another process finalized the job.
    """
    shards = entry / ".extract" / job.token
    bar = tqdm(total=job.rows, unit="img", desc=label or "", disable=None if label else True, mininterval=1.0)
    counted = set()
    try:
        while True:
            waiting = False
            for shard in job.shards:
                if shard not in counted and _done(shards, shard):
                    counted.add(shard)
                    start, stop = job.bounds(shard)
                    bar.update(stop - start)
                if shard in counted:
                    continue
                claim = shards / f"{shard}.claim"
                if lock.take(claim, f"extraction ({name})", log, f"shard {shard} of {entry.name}") is not None:
                    waiting = True
                    continue
                with lock.kept(claim):
                    if not _done(shards, shard):  # done by another just before this claim
                        _compute(job, entry, segment, inputs, shard, bar)
                        files.write_json(shards / f"{shard}.done", {"by": name})
                        counted.add(shard)
            if not waiting and len(counted) == len(job.shards):
                break
            time.sleep(_POLL_SECONDS)
        _finalize(job, entry, key, name, log)
    except FileNotFoundError:
        if read_job(entry) == job:
            raise
        # Finalized (and removed) by another process meanwhile.
    finally:
        bar.close()


def _done(shards: Path, shard: int) -> bool:
    return (shards / f"{shard}.done").is_file()


def _compute(job: Job, entry: Path, segment, inputs, shard: int, bar) -> None:
    """Writes the rows of one shard into the partial files and syncs them (before its done marker)."""
    start, stop = job.bounds(shard)
    handles = [os.open(job.partial(entry, cut), os.O_WRONLY) for cut in job.cuts]
    try:
        for first in range(start, stop, job.batch):
            outputs = segment.predict_on_batch(np.asarray(inputs[first:min(stop, first + job.batch)]))
            for handle, output in zip(handles, outputs if isinstance(outputs, list) else [outputs]):
                values = np.ascontiguousarray(output, dtype=job.dtype)
                if job.dtype != "float32" and not np.isfinite(values).all():
                    raise UserError(f"Activations of {entry.name} overflow {job.dtype}; "
                                    "run with --cache-dtype float32.")
                _write_at(handle, values.tobytes(), first * values[0].nbytes)
            bar.update(len(output))
        for handle in handles:
            os.fsync(handle)
    finally:
        for handle in handles:
            os.close(handle)


def _write_at(handle: int, data: bytes, offset: int) -> None:
    # pwrite, not a shared memory map: on a shared filesystem a mapped page is written back
    # whole, which would overwrite the neighbouring shard's rows in a page both touch.
    view = memoryview(data)
    while view:
        written = os.pwrite(handle, view, offset)
        view, offset = view[written:], offset + written


def _finalize(job: Job, entry: Path, key: dict, name: str, log) -> None:
    """Renames the partial files and writes each cut's ``.json``, once (a killed finalizer's is redone)."""
    final = entry / ".extract" / job.token / "final.claim"
    while lock.take(final, f"finalizing ({name})", log) is not None:
        time.sleep(_POLL_SECONDS)  # another process is finalizing; it removes the job when done
        if read_job(entry) != job:
            return
    with lock.kept(final):
        if read_job(entry) != job:
            return  # finalized by the process that held the claim before
        shards = entry / ".extract" / job.token
        by = Counter(json.loads((shards / f"{s}.done").read_text())["by"] for s in job.shards)
        record = {"seconds": round(time.time() - job.created, 1), "shards": dict(sorted(by.items()))}
        for cut, shape in zip(job.cuts, job.shapes):
            if job.partial(entry, cut).exists():
                os.replace(job.partial(entry, cut), entry / f"{cut}.{SUFFIX[job.dtype]}")
            files.write_json(entry / f"{cut}.json", {**key, "cut": cut, "shape": list(shape), "dtype": job.dtype,
                                                     "extraction": record})
        (entry / ".extract" / _JOB).unlink()
    shutil.rmtree(entry / ".extract", ignore_errors=True)


def _remove(entry: Path, job: Job) -> None:
    """Removes what an unstarted job made: its partial files and shard folder."""
    for cut in job.cuts:
        with contextlib.suppress(FileNotFoundError):
            job.partial(entry, cut).unlink()
    shutil.rmtree(entry / ".extract" / job.token, ignore_errors=True)
