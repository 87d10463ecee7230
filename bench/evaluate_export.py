"""Evaluate and export of an existing run, as the whole job runs them (one process), on a fresh copy.

    python bench/evaluate_export.py RUN_DIR [--copy DIR]

Copies RUN_DIR (a finished job's run directory, left untouched) to DIR (default a temporary
folder), runs `evaluate` then `export` on the copy and prints each stage's wall time beside
its floor, from the copy's ``summary.json``. Run it under the shared lock; compare pairs run
back to back (docs/performance.md, "Evaluate and export near their floor").
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from cxr_tuner.search.delivery.export import export_model  # noqa: E402
from cxr_tuner.search.engine import timing  # noqa: E402
from cxr_tuner.search.engine.config import load_config  # noqa: E402
from cxr_tuner.search.evaluation.evaluate import evaluate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--copy", type=Path, default=None)
    args = parser.parse_args()
    copy = args.copy or Path(tempfile.mkdtemp(prefix="evaluate-export-")) / "run"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(args.run_dir, copy)
    config = load_config(copy)
    started = time.perf_counter()
    quiet = lambda line: None
    evaluate(config, log=quiet)
    export_model(config, log=quiet)
    print(f"evaluate + export: {time.perf_counter() - started:.1f} s wall in one process ({copy})")
    for line in timing.stage_lines(config.layout):
        if line.strip().startswith(("evaluate", "export")):
            print(line)


if __name__ == "__main__":
    main()
