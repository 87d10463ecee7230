"""Side by side: `cli.py search` + `retrain` against plain KerasTuner, same data, split, budget.

    python bench/run.py --data ../shared/data/cxr3-dev --backbones mobilenet_025 \\
        --weights imagenet --image-size 224 --max-epochs 9 --factor 3 [--limit 500]

Every step runs in its own process (peak RSS: the process's own from ``wait4``, or if
higher that of it and its children, e.g. local workers, sampled every second; see
:class:`_TreeMemory`):
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

from search.layout import RunLayout  # noqa: E402  (no TensorFlow: the runner stays light)


def run_step(name: str, command: list[str], log: Path) -> dict:
    """Runs ``command``; returns its wall seconds, peak RSS (MB) and stdout's last line."""
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=out, text=True)
        sampler = _TreeMemory(process.pid)
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


class _TreeMemory:
    """Peak resident memory of a process and its descendants (e.g. local workers).

    Their own (anonymous and shared-memory) pages summed, plus the largest one's
    file-backed pages: those are the same files (libraries, the cache every worker
    maps), resident once. Read from ``/proc/PID/status``, which is cheap; the exact
    PSS (``smaps_rollup``) walks every page and slowed a 2-worker search by ~30 %.
    """

    def __init__(self, pid: int, every: float = 1.0):
        self.pid, self.peak_mb = pid, 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def _run(self, every: float) -> None:
        while not self._done.wait(every):
            counts = [_status_mb(p) for p in _tree(self.pid)]
            own = sum(c.get("RssAnon", 0) + c.get("RssShmem", 0) for c in counts)
            self.peak_mb = max(self.peak_mb, own + max((c.get("RssFile", 0) for c in counts), default=0))


def _tree(root: int) -> list[int]:
    """``root`` and the processes descending from it, from /proc."""
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


def _status_mb(pid: int) -> dict[str, float]:
    """The ``Rss*`` lines of ``/proc/PID/status``, in MB (empty once the process is gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {line.split(":")[0]: int(line.split()[1]) / 1024 for line in lines if line.startswith("Rss")}


def limited_copy(data: str, limit: int, seed: int, folder: Path) -> str:
    """A folder per class of symlinks to ``limit`` images of ``data``, stratified by class."""
    from sklearn.model_selection import train_test_split

    from data import manifest

    examples = manifest.discover(Path(data))
    if limit < len(examples):
        examples, _ = train_test_split(examples, train_size=limit, random_state=seed,
                                       stratify=[e.label for e in examples])
    for i, example in enumerate(examples):
        (folder / example.label).mkdir(parents=True, exist_ok=True)
        (folder / example.label / f"{i:06d}-{Path(example.path).name}").symlink_to(Path(example.path).resolve())
    return str(folder)


def main(argv=None) -> dict:
    args = _arguments(argv)
    work = Path(args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    (work / "logs").mkdir(parents=True)
    data = limited_copy(args.data, args.limit, args.seed, work / "data") if args.limit else args.data
    python, ours = sys.executable, work / "ours"
    budget = ["--backbones", args.backbones, "--weights", args.weights, "--image-size", str(args.image_size),
              "--max-epochs", str(args.max_epochs), "--factor", str(args.factor), "--seed", str(args.seed)]
    steps = {}
    steps["ours_search"] = run_step("this project: search", [
        python, "cli.py", "search", "--data", str(Path(data).resolve()), "--run-dir", str(ours), *budget,
        "--no-retrain", "--workers", str(args.workers)], work / "logs" / "ours_search.log")
    steps["ours_retrain"] = run_step("this project: retrain the winners", [
        python, "bench/measure.py", "retrain", str(ours)], work / "logs" / "ours_retrain.log")
    steps["ours_retrain"].update(json.loads(steps["ours_retrain"]["last_line"]))
    score = json.loads(run_step("score", [python, "bench/measure.py", "score", str(ours)],
                                work / "logs" / "score.log")["last_line"])
    floor = json.loads(run_step("floor", [python, "bench/measure.py", "floor", str(ours), args.backbones.split(",")[0]],
                                work / "logs" / "floor.log")["last_line"])
    steps["reference"] = run_step("reference: plain KerasTuner", [
        python, "bench/reference.py", "--split", str(RunLayout(ours).split), "--work", str(work / "reference"),
        "--out", str(work / "reference.json"), *budget],
        work / "logs" / "reference.log")
    reference = json.loads((work / "reference.json").read_text())
    results = _results(args, ours, steps, score, floor, reference)
    if args.memory_trials:
        results["memory"] = memory_trend(python, data, budget, args.memory_trials, work)
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return results


def memory_trend(python: str, data: str, budget: list[str], trials: int, work: Path) -> dict:
    """Peak RSS of the first and last 10 trials of a ``trials``-trial random search."""
    run_dir = work / "memory"
    run_step(f"this project: {trials}-trial search for memory", [
        python, "cli.py", "search", "--data", str(Path(data).resolve()), "--run-dir", str(run_dir), *budget,
        "--tuner", "random", "--max-trials", str(trials), "--no-retrain"], work / "logs" / "memory.log")
    rows = [line.split(",") for line in RunLayout(run_dir).memory.read_text().splitlines()]
    peak = [float(r[1]) for r in rows]
    anonymous = [float(r[3]) for r in rows]
    first, last = sum(peak[:10]) / 10, sum(peak[-10:]) / 10
    return {"trials": len(rows), "peak_rss_first_10_mb": first, "peak_rss_last_10_mb": last,
            "change": last / first - 1, "anonymous_rss_first_10_mb": sum(anonymous[:10]) / 10,
            "anonymous_rss_last_10_mb": sum(anonymous[-10:]) / 10}


def _results(args, ours: Path, steps: dict, score: dict, floor: dict, reference: dict) -> dict:
    best = json.loads(RunLayout(ours).best.read_text())
    return {
        "settings": vars(args),
        "floor": floor,
        "ours": {"search_seconds": steps["ours_search"]["seconds"],
                 "retrain_seconds": steps["ours_retrain"]["retrain_seconds"],
                 "retrain_process_seconds": steps["ours_retrain"]["seconds"],
                 "workers": args.workers, "trials": best["trials"],
                 "peak_rss_mb": max(steps["ours_search"]["peak_rss_mb"], steps["ours_retrain"]["peak_rss_mb"]),
                 **score, "best_hyperparameters": best["best"]["hyperparameters"]},
        "reference": {**{k: reference[k] for k in ("search_seconds", "retrain_seconds", "trials", "test_macro_f1",
                                                   "covid_sensitivity", "best_hyperparameters")},
                      "process_seconds": steps["reference"]["seconds"],
                      "peak_rss_mb": steps["reference"]["peak_rss_mb"]},
    }


def table(results: dict) -> str:
    """The side-by-side table as Markdown."""
    ours, ref, floor = results["ours"], results["reference"], results["floor"]
    rows = [
        ("search wall time (s)", ours["search_seconds"], ref["search_seconds"]),
        ("retrain wall time (s)", ours["retrain_seconds"], ref["retrain_seconds"]),
        ("search + retrain (s)", ours["search_seconds"] + ours["retrain_seconds"],
         ref["search_seconds"] + ref["retrain_seconds"]),
        ("trials completed", ours["trials"], ref["trials"]),
        ("peak RSS (MB)", ours["peak_rss_mb"], ref["peak_rss_mb"]),
        ("test macro-F1", ours["test_macro_f1"], ref["test_macro_f1"]),
        ("test COVID sensitivity", ours["covid_sensitivity"], ref["covid_sensitivity"]),
    ]
    workers = ours.get("workers", 1)
    lines = [f"| | this project{f' (--workers {workers})' if workers > 1 else ''} | plain KerasTuner |",
             "| --- | ---: | ---: |"]
    lines += [f"| {name} | {_cell(a)} | {_cell(b)} |" for name, a, b in rows]
    speed = ref["search_seconds"] / ours["search_seconds"]
    total = (ref["search_seconds"] + ref["retrain_seconds"]) / (ours["search_seconds"] + ours["retrain_seconds"])
    lines += ["", f"floor (one forward pass over {floor['images']} images): {floor['floor_seconds']:.1f} s "
              f"({floor['images_per_second']:.0f} images/s); our search = {ours['search_seconds'] / floor['floor_seconds']:.1f}x "
              f"the floor; search {speed:.1f}x faster, search + retrain {total:.1f}x faster"]
    if "memory" in results:
        memory = results["memory"]
        lines.append(f"memory over a {memory['trials']}-trial search: peak RSS of the first 10 trials "
                     f"{memory['peak_rss_first_10_mb']:.0f} MB, of the last 10 {memory['peak_rss_last_10_mb']:.0f} MB "
                     f"({memory['change']:+.1%}); anonymous RSS {memory['anonymous_rss_first_10_mb']:.0f} -> "
                     f"{memory['anonymous_rss_last_10_mb']:.0f} MB")
    return "\n".join(lines)


def _cell(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) and value < 10 else (
        f"{value:.0f}" if isinstance(value, float) else str(value))


def _arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="labelled image folder or CSV manifest")
    parser.add_argument("--work", default="bench-runs/latest", help="output folder (emptied first)")
    parser.add_argument("--backbones", default="mobilenet_025")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--max-epochs", type=int, default=9)
    parser.add_argument("--factor", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="use N images, stratified by class")
    parser.add_argument("--workers", type=int, default=1, help="`cli.py search --workers N` for this project's search")
    parser.add_argument("--memory-trials", type=int, default=0,
                        help="also run an N-trial random search and compare the peak RSS of its first and last 10 trials")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
