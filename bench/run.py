"""Side by side: the whole default job of `cli.py search` against plain KerasTuner, same data, split, budget.

    python bench/run.py --data ../shared/data/cxr3-dev --backbones mobilenet_025 \\
        --weights imagenet --image-size 224 --max-epochs 9 --factor 3 [--limit 500]

Every step runs in its own process (peak RSS: the process's own from ``wait4``, or if
higher that of it and its children, e.g. local workers, sampled every second; see
:class:`_TreeMemory`):
this project's default job in its phases, each a ``cli.py`` command with its defaults
(search with ``--no-retrain``; ``retrain``; ``evaluate``, which first assembles the
final model: ensemble, temperature and operating point, on validation; ``export``),
the floor (one forward pass of the backbone over every image), and the reference
(``bench/reference.py``) on the split the project's search wrote, scored with the
same bootstrap CIs. Prints one table and writes ``results.json`` into ``--work``.
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

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from search.evaluation.metrics import figure_text  # noqa: E402  (no TensorFlow: the runner stays light)
from search.layout import RunLayout  # noqa: E402


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
    # The whole default job of `cli.py search`, one process per phase so each has its wall time
    # (each phase pays starting Python and importing TensorFlow, ~5 s, that one process pays once).
    steps["ours_search"] = run_step("this project: search", [
        python, "cli.py", "search", "--data", str(Path(data).resolve()), "--run-dir", str(ours), *budget,
        "--no-retrain", "--workers", str(args.workers)], work / "logs" / "ours_search.log")
    for phase, command in (("retrain", ["retrain", str(ours)]),
                           ("evaluate", ["evaluate", str(ours), *args.final_flags.split()]),
                           ("export", ["export", str(ours)])):
        steps[f"ours_{phase}"] = run_step(f"this project: {phase}", [python, "cli.py", *command],
                                          work / "logs" / f"ours_{phase}.log")
    floor = json.loads(run_step("floor", [python, "bench/measure.py", "floor", str(ours), args.backbones.split(",")[0]],
                                work / "logs" / "floor.log")["last_line"])
    steps["reference"] = run_step("reference: plain KerasTuner", [
        python, "bench/reference.py", "--split", str(RunLayout(ours).split), "--work", str(work / "reference"),
        "--out", str(work / "reference.json"), *budget],
        work / "logs" / "reference.log")
    reference = json.loads((work / "reference.json").read_text())
    results = _results(args, ours, steps, floor, reference)
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


def _results(args, ours: Path, steps: dict, floor: dict, reference: dict) -> dict:
    from search.evaluation.metrics import classification_metrics

    layout = RunLayout(ours)
    best = json.loads(layout.best.read_text())
    metrics = json.loads(layout.metrics.read_text())
    summary = json.loads(layout.winners_summary.read_text())
    phases = {name: steps[f"ours_{name}"]["seconds"] for name in ("search", "retrain", "evaluate", "export")}
    ref_metrics = classification_metrics(np.array(reference["test_labels"]), np.array(reference["test_probabilities"]),
                                         reference["class_names"])
    return {
        "settings": vars(args),
        "floor": floor,
        "ours": {"phase_seconds": phases, "total_seconds": sum(phases.values()),
                 "workers": args.workers, "trials": best["trials"],
                 "peak_rss_mb": max(steps[f"ours_{name}"]["peak_rss_mb"] for name in phases),
                 "retrain_variant": summary["variant"], "augment": summary["augment"],
                 "final": metrics["single_vs_final"], "operating_point": metrics.get("operating_point"),
                 "calibration": metrics["calibration"], "n_test": metrics["n"],
                 "best_hyperparameters": best["best"]["hyperparameters"]},
        "reference": {**{k: reference[k] for k in ("search_seconds", "retrain_seconds", "trials",
                                                   "best_hyperparameters")},
                      "process_seconds": steps["reference"]["seconds"],
                      "peak_rss_mb": steps["reference"]["peak_rss_mb"],
                      **{k: ref_metrics[k] for k in ("macro_f1", "covid_sensitivity", "covid_specificity")},
                      "ece": ref_metrics["ece"]["value"]},
    }


def table(results: dict) -> str:
    """The side-by-side table as Markdown."""
    ours, ref, floor = results["ours"], results["reference"], results["floor"]
    phases, final, point, cal = ours["phase_seconds"], ours["final"], ours["operating_point"], ours["calibration"]
    ref_total = ref["search_seconds"] + ref["retrain_seconds"]
    no = "n/a"
    rows = [
        ("search (s)", phases["search"], ref["search_seconds"]),
        ("retrain (s)", phases["retrain"], ref["retrain_seconds"]),
        ("ensemble + calibration + operating point + evaluate (s)", phases["evaluate"], no),
        ("export (s)", phases["export"], no),
        ("whole job (s)", ours["total_seconds"], ref_total),
        ("trials completed", ours["trials"], ref["trials"]),
        ("peak RSS (MB)", ours["peak_rss_mb"], ref["peak_rss_mb"]),
        (f"test macro-F1, final model ({final['final_kind']}: {', '.join(final['members'])})",
         figure_text(final["final"]["macro_f1"]), figure_text(ref["macro_f1"])),
        ("test macro-F1, single best", figure_text(final["single_best"]["macro_f1"]), no),
        ("COVID sensitivity at argmax", figure_text(final["final"]["covid_sensitivity"]), figure_text(ref["covid_sensitivity"])),
        ("COVID specificity at argmax", figure_text(final["final"]["covid_specificity"]), figure_text(ref["covid_specificity"])),
        ("single best: COVID sensitivity / specificity at argmax",
         f"{figure_text(final['single_best']['covid_sensitivity'])} / {figure_text(final['single_best']['covid_specificity'])}", no),
    ]
    if point:
        rows += [(f"COVID sensitivity at the operating point ({point['metric']} >= {point['target']:g} on val, "
                  f"threshold {point['threshold']:.3f})", figure_text(point["test"]["sensitivity"]), no),
                 ("COVID specificity at the operating point", figure_text(point["test"]["specificity"]), no)]
    rows += [("test ECE before / after temperature scaling",
              f"{cal['ece_before']:.3f} / {cal['ece_after']:.3f} (T = {cal['temperature']:.2f})",
              f"{ref['ece']:.3f} / {no}")]
    workers = ours.get("workers", 1)
    lines = [f"| | this project{f' (--workers {workers})' if workers > 1 else ''} | plain KerasTuner |",
             "| --- | ---: | ---: |"]
    lines += [f"| {name} | {_cell(a)} | {_cell(b)} |" for name, a, b in rows]
    variant = ours["retrain_variant"]
    lines += ["", f"test split: {ours['n_test']} images; CIs: 95% percentile bootstrap over test cases",
              f"retrain variant chosen on validation: {variant['chosen']} (" + ", ".join(
                  f"{k} {v:.4f}" for k, v in variant["tried"].items()) + f"); augmentation {ours['augment']}",
              f"floor (one forward pass over {floor['images']} images): {floor['floor_seconds']:.1f} s; "
              f"search {ref['search_seconds'] / phases['search']:.1f}x faster than the reference's, "
              f"whole job {ref_total / ours['total_seconds']:.1f}x faster than its search + retrain"]
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
    parser.add_argument("--final-flags", default="",
                        help="flags for this project's `cli.py evaluate`, e.g. '--ensemble 1' (default: its defaults)")
    parser.add_argument("--memory-trials", type=int, default=0,
                        help="also run an N-trial random search and compare the peak RSS of its first and last 10 trials")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
