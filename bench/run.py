"""Side by side: `cli.py search` + `retrain` against plain KerasTuner, same data, split, budget.

    python bench/run.py --data ../shared/data/cxr3-dev --backbones mobilenet_025 \\
        --weights imagenet --image-size 224 --max-epochs 9 --factor 3 [--limit 500]

Every step runs in its own process (peak RSS: the process's own from ``wait4``, or if
higher the summed PSS of it and its children, e.g. local workers, sampled every 0.2 s):
this project's search (decode, activation cache, Hyperband) and retrain of its best
configurations (``cli.py retrain RUN_DIR --no-augment``: the default top 3, without
augmentation as the reference, timed after the imports as the reference's retrain
is), the floor (one forward pass of the backbone over every image), and
the reference (``bench/reference.py``) on the split the project's search wrote.
Prints one table and writes ``results.json`` into ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def run_step(name: str, command: list[str], log: Path) -> dict:
    """Runs ``command``; returns its wall seconds, peak RSS (MB) and stdout's last line."""
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=out, text=True)
        sampler = _TreeRss(process.pid)
        stdout = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        sampler.stop()
        out.write(stdout)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{name} failed; see {log}")
    lines = [line for line in stdout.splitlines() if line.strip()]
    return {"seconds": seconds, "peak_rss_mb": max(usage.ru_maxrss / 1024, sampler.peak_mb),
            "last_line": lines[-1] if lines else "", "stdout": stdout}


class _TreeRss:
    """Peak of the summed proportional memory (PSS) of a process and its descendants (e.g. local workers)."""

    def __init__(self, pid: int, every: float = 0.2):
        self.pid, self.peak_mb = pid, 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def _run(self, every: float) -> None:
        while not self._done.wait(every):
            self.peak_mb = max(self.peak_mb, sum(_pss_mb(p) for p in _tree(self.pid)))


def _tree(root: int) -> list[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def _pss_mb(pid: int) -> float:
    """Proportional resident memory: pages shared with other processes (the cache files
    every worker maps, libraries) count once across them, not once per process as in RSS."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
