"""Side by side: the whole default job of `cli.py search` against plain KerasTuner, same data and test films.

    python bench/run.py --data ../shared/data/cxr3-dev --folds 5 --time-budget 2m --time-budget 5m \\
        --backbones mobilenet_025 --weights imagenet --image-size 224 --max-epochs 9 --factor 3

Every job runs in its own process (peak RSS: the process's own from ``wait4``, or if
higher that of it and its children, e.g. local workers, sampled every second; see
:class:`_TreeMemory`): this project's whole job, one ``cli.py search`` as a user runs
it (its stages' wall times and floors come from its ``summary.json``), again with
``--folds K`` and with each ``--time-budget`` asked (its share of the budget used); the floor
(one forward pass of the backbone over every image); and the reference. The reference is the
tutorials' plain KerasTuner user (``bench/plain_user.py``: its own 80/20 split by file of the
default job's train+val films, scored on the default job's test films), or with
``--reference space`` this project's space in plain KerasTuner on the project's own split
(``bench/reference.py``). With ``--subset N`` the collection is a patient-grouped subset of
about N films and every final model is also scored on all the other films, which no
job has seen. Everything is scored with the same bootstrap CIs. Prints one table and
writes ``results.json`` into ``--work``.
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

from folds import write_subset
from cxr_tuner.search.figures.text import figure_text, parse_duration  # no TensorFlow: the runner stays light
from cxr_tuner.search.engine.layout import RunLayout


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

    from cxr_tuner.data import manifest

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
    heldout = []
    if args.subset:  # a patient-grouped subset is the whole collection; the other films are scored at the end
        subset, heldout = write_subset(Path(args.data), args.subset, work)
        data = str(subset)
    else:
        data = limited_copy(args.data, args.limit, args.seed, work / "data") if args.limit else args.data
    (work / "heldout.csv").write_text("path,label\n" + "".join(f"{r['path']},{r['label']}\n" for r in heldout))
    python = sys.executable
    budget = ["--backbones", args.backbones, "--weights", args.weights, "--image-size", str(args.image_size),
              "--max-epochs", str(args.max_epochs), "--factor", str(args.factor), "--seed", str(args.seed)]
    jobs = {"default": []}
    if args.folds:
        jobs[f"--folds {args.folds}"] = ["--folds", str(args.folds)]
    for budget_text in args.time_budget:
        jobs[f"--time-budget {budget_text}"] = ["--time-budget", budget_text]
    ours = {}
    for name, extra in jobs.items():
        run_dir = work / ("ours" if name == "default" else "ours-" + name.strip("-").replace(" ", "-"))
        # The whole job in one process, as a user runs it: its stages time themselves (summary.json).
        step = run_step(f"this project: cli.py search {' '.join(extra)}".rstrip(), [
            python, "cli.py", "search", "--data", str(Path(data).resolve()), "--run-dir", str(run_dir), *budget,
            "--workers", str(args.workers), *args.final_flags.split(), *extra],
            work / "logs" / f"{run_dir.name}.log")
        ours[name] = {"run_dir": str(run_dir), "seconds": step["seconds"], "peak_rss_mb": step["peak_rss_mb"]}
        if "--time-budget" in extra:
            ours[name]["budget_seconds"] = parse_duration(extra[extra.index("--time-budget") + 1])
    main_run = Path(ours["default"]["run_dir"])
    floor = json.loads(run_step("floor", [python, "bench/measure.py", "floor", str(main_run),
                                          args.backbones.split(",")[0]], work / "logs" / "floor.log")["last_line"])
    _weights_in_keras_cache()  # the reference loads ImageNet weights as any Keras user does
    if args.reference == "plain":
        reference_step, reference = plain_user(python, main_run, heldout, args, work)
    else:
        reference_step = run_step("reference: this project's space in plain KerasTuner", [
            python, "bench/reference.py", "--split", str(RunLayout(main_run).split), "--work", str(work / "reference"),
            "--out", str(work / "reference.json"), *budget, *(["--heldout", str(work / "heldout.csv")] if heldout else [])],
            work / "logs" / "reference.log")
        reference = json.loads((work / "reference.json").read_text())
    if heldout:
        for name, entry in ours.items():
            entry["heldout"] = json.loads(run_step(f"held-out films: {name}", [
                python, "bench/measure.py", "heldout", entry["run_dir"], str(work / "heldout.csv")],
                work / "logs" / f"heldout-{Path(entry['run_dir']).name}.log")["last_line"])
    results = _results(args, ours, reference_step, floor, reference, bool(heldout))
    if args.memory_trials:
        results["memory"] = memory_trend(python, data, budget, args.memory_trials, work)
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return results


def plain_user(python: str, run: Path, heldout: list[dict], args, work: Path) -> tuple[dict, dict]:
    """The tutorials' user (``bench/plain_user.py``) on the default job's train+val films, scored on its test
    films (and the held-out ones); returns its step and a result shaped as ``bench/reference.py``'s."""
    import csv

    tree, films = work / "plain-user-train", work / "plain-user-films.csv"
    with open(RunLayout(run).split, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for i, row in enumerate(r for r in rows if r["split"] in ("train", "val")):
        (tree / row["label"]).mkdir(parents=True, exist_ok=True)
        (tree / row["label"] / f"{i:06d}-{Path(row['path']).name}").symlink_to(Path(row["path"]).resolve())
    test = [(str(Path(r["path"]).resolve()), r["label"]) for r in rows if r["split"] == "test"]
    scored = test + [(str(Path(r["path"]).resolve()), r["label"]) for r in heldout]
    films.write_text("path,label\n" + "".join(f"{path},{label}\n" for path, label in scored))
    step = run_step("reference: the tutorials' plain KerasTuner user", [
        python, "bench/plain_user.py", "--train", str(tree), "--heldout", str(films), "--work",
        str(work / "plain-user"), "--out", str(work / "reference.json"), "--weights", args.weights,
        "--image-size", str(args.image_size), "--max-epochs", str(args.max_epochs), "--seed", str(args.seed)],
        work / "logs" / "reference.log")
    result = json.loads((work / "reference.json").read_text())
    labels, probabilities = result["labels"], result["probabilities"]
    cut = len(test)
    return step, {"class_names": result["class_names"], "trials": result["trials"],
                  "best_hyperparameters": result["best_hyperparameters"], "search_seconds": result["search_seconds"],
                  "retrain_seconds": result["job_seconds"] - result["search_seconds"],
                  "test_labels": labels[:cut], "test_probabilities": probabilities[:cut],
                  **({"heldout_labels": labels[cut:], "heldout_probabilities": probabilities[cut:]} if heldout else {})}


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


def _results(args, ours: dict, reference_step: dict, floor: dict, reference: dict, heldout: bool) -> dict:
    from cxr_tuner.search.figures.metrics import classification_metrics
    from cxr_tuner.search.engine import timing

    for entry in ours.values():
        layout = RunLayout(entry["run_dir"])
        metrics = json.loads(layout.metrics.read_text())
        entry.update(stages=timing.stages(layout), trials=json.loads(layout.best.read_text())["trials"],
                     test=metrics["single_vs_final"]["final"] if "single_vs_final" in metrics else
                     {**metrics, "ece": metrics["ece"]["value"]},
                     operating_point=metrics.get("operating_point"), calibration=metrics.get("calibration"),
                     n_test=metrics["n"], winner=json.loads(layout.best.read_text())["best"]["hyperparameters"])
    names = reference["class_names"]
    scored = {"test": classification_metrics(np.array(reference["test_labels"]),
                                             np.array(reference["test_probabilities"]), names)}
    if heldout:
        scored["heldout"] = classification_metrics(np.array(reference["heldout_labels"]),
                                                   np.array(reference["heldout_probabilities"]), names)
    return {"settings": vars(args), "floor": floor, "ours": ours,
            "reference": {**{k: reference[k] for k in ("search_seconds", "retrain_seconds", "trials",
                                                       "best_hyperparameters")},
                          "process_seconds": reference_step["seconds"], "peak_rss_mb": reference_step["peak_rss_mb"],
                          **{f"{where}_{k}": figures[k] for where, figures in scored.items()
                             for k in ("macro_f1", "covid_sensitivity", "covid_specificity")},
                          **{f"{where}_ece": figures["ece"]["value"] for where, figures in scored.items()}}}


def table(results: dict) -> str:
    """The side-by-side table as Markdown: the reference, then each job of this project."""
    ref, floor = results["reference"], results["floor"]
    ref_total = ref["search_seconds"] + ref["retrain_seconds"]
    names = list(results["ours"])
    lines = ["| | plain KerasTuner | " + " | ".join(f"this project, {n}" for n in names) + " |",
             "| --- | ---: |" + " ---: |" * len(names)]

    def row(label, reference_cell, cell):
        lines.append(f"| {label} | {reference_cell} | " + " | ".join(cell(results["ours"][n]) for n in names) + " |")

    row("whole job (s)", f"{ref_total:.0f} (search {ref['search_seconds']:.0f} + retrain {ref['retrain_seconds']:.0f})",
        lambda o: f"{o['seconds']:.0f} ({ref_total / o['seconds']:.1f}x faster)")
    from cxr_tuner.search.engine.timing import STAGES
    for stage in STAGES:
        row(f"  {stage} (s; floor, ratio)", "",
            lambda o, stage=stage: _stage_cell(o["stages"].get(stage)))
    row("share of the time budget used", "", lambda o: f"{o['seconds'] / o['budget_seconds']:.0%} of "
        f"{o['budget_seconds']:.0f} s" if "budget_seconds" in o else "")
    row("trials", str(ref["trials"]), lambda o: str(o["trials"]))
    row("peak RSS (MB)", f"{ref['peak_rss_mb']:.0f}", lambda o: f"{o['peak_rss_mb']:.0f}")
    for where in ("test", "heldout"):
        if f"{where}_macro_f1" not in ref:
            continue
        label = "test split" if where == "test" else "held-out films"
        row(f"{label}: macro-F1", figure_text(ref[f"{where}_macro_f1"]),
            lambda o, where=where: figure_text((o["test"] if where == "test" else o["heldout"])["macro_f1"]))
        row(f"{label}: COVID sensitivity / specificity at argmax",
            f"{figure_text(ref[f'{where}_covid_sensitivity'])} / {figure_text(ref[f'{where}_covid_specificity'])}",
            lambda o, where=where: (lambda m: f"{figure_text(m['covid_sensitivity'])} / "
                                              f"{figure_text(m['covid_specificity'])}")(
                o["test"] if where == "test" else o["heldout"]))
        row(f"{label}: COVID sensitivity / specificity at the operating point", "n/a",
            lambda o, where=where: _point_cell(o, where))
        row(f"{label}: ECE", f"{ref[f'{where}_ece']:.3f}",
            lambda o, where=where: f"{(o['test'] if where == 'test' else o['heldout'])['ece']:.3f}")
    lines += ["", f"floor of the data: one forward pass of the backbone over {floor['images']} images, "
                  f"{floor['floor_seconds']:.1f} s; CIs: 95% percentile bootstrap over the scored films"]
    lines += [f"winner, {n}: {results['ours'][n]['winner']}" for n in names]
    lines.append(f"winner, plain KerasTuner: {ref['best_hyperparameters']}")
    if "memory" in results:
        memory = results["memory"]
        lines.append(f"memory over a {memory['trials']}-trial search: peak RSS of the first 10 trials "
                     f"{memory['peak_rss_first_10_mb']:.0f} MB, of the last 10 {memory['peak_rss_last_10_mb']:.0f} MB "
                     f"({memory['change']:+.1%}); anonymous RSS {memory['anonymous_rss_first_10_mb']:.0f} -> "
                     f"{memory['anonymous_rss_last_10_mb']:.0f} MB")
    return "\n".join(lines)


def _weights_in_keras_cache() -> None:
    """Copies the package's own ImageNet files into the Keras cache where it has none (no network here)."""
    from cxr_tuner.hypermodels.weights import SHIPPED_DIR, keras_cache_dir

    keras_cache_dir().mkdir(parents=True, exist_ok=True)
    for shipped in SHIPPED_DIR.glob("*.h5"):
        if not (keras_cache_dir() / shipped.name).is_file():
            shutil.copyfile(shipped, keras_cache_dir() / shipped.name)


def _stage_cell(entry) -> str:
    if not entry:
        return "n/a"
    floor = entry.get("floor") or {}
    if floor.get("seconds"):
        return f"{entry['seconds']:.1f} ({floor['seconds']:.1f}, {entry['seconds'] / floor['seconds']:.1f}x)"
    return f"{entry['seconds']:.1f}"


def _point_cell(ours: dict, where: str) -> str:
    point = ours.get("operating_point")
    if not point:
        return "off"
    figures = point["test"] if where == "test" else ours["heldout"].get("operating_point")
    if not figures:
        return "n/a"
    return (f"{figure_text(figures['sensitivity'])} / {figure_text(figures['specificity'])} "
            f"(threshold {point['threshold']:.3f})")


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
    parser.add_argument("--subset", type=int, default=None,
                        help="use a patient-grouped subset of about N films (the data needs metadata.csv) and score "
                             "both jobs on all the other films too")
    parser.add_argument("--folds", type=int, default=None, help="also run the job with --folds K")
    parser.add_argument("--memory-trials", type=int, default=0,
                        help="also run an N-trial random search and compare the peak RSS of its first and last 10 trials")
    parser.add_argument("--time-budget", action="append", default=[],
                        help="also run the job with --time-budget DURATION (repeatable)")
    parser.add_argument("--reference", choices=("plain", "space"), default="plain",
                        help="plain: the tutorials' KerasTuner user (bench/plain_user.py); space: this project's "
                             "space in plain KerasTuner on the project's split (bench/reference.py)")
    parser.add_argument("--workers", type=int, default=1, help="`cli.py search --workers N` for this project's search")
    parser.add_argument("--final-flags", default="",
                        help="extra flags for this project's `cli.py search`, e.g. '--ensemble 1' (default: its defaults)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
