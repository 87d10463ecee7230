"""The search space file on real films: the default round trip, a narrowed space, a `keras:` backbone.

    python bench/space.py --data ../shared/data/cxr3-dev [--image-size 96] [--max-epochs 4]
        [--backbones mobilenet_025,vanilla_cnn] [--keras keras:MobileNetV3Small] [--work bench-runs/space]
        [--parts a,b,c]

(a) ``cxr-tuner space`` with the search's flags, read back with ``--space``, against no file:
    the same seed must give the same trials (values and scores), in the same order.
(b) A space that fixes the backbone and narrows two ranges (the learning rate and the head
    depth): wall time against (a)'s no-file search, and every trial inside the ranges.
(c) The ``--keras`` backbone end to end (search, retrain, evaluate, export) at the image size
    with ``--weights none``; and with ImageNet weights where its file is in the Keras cache
    (else the one line the tool prints about the missing file).

Each part is a ``cli.py`` process in its own run directory under ``--work`` (emptied first).
Prints one summary and writes ``results.json`` there.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from time_budget import read_json, test_figures
from cxr_tuner.search.engine.layout import RunLayout  #light: no TensorFlow)


def main(argv=None) -> dict:
    args = _arguments(argv)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data = str(Path(args.data).resolve())
    flags = ["--data", data, "--backbones", args.backbones, "--image-size", str(args.image_size),
             "--max-epochs", str(args.max_epochs), "--seed", str(args.seed)]
    results, parts = {}, set(args.parts.split(","))
    if parts & {"a", "b"}:
        results["no_file"] = _search(work / "no-file", [*flags, "--no-retrain"])
    if "a" in parts:
        space_flags = flags[:flags.index("--seed")]  # the seed is not part of the space
        printed = _cli(["space", *space_flags], work / "space-default.log")
        if printed.returncode or "[hyperparameters]" not in printed.stdout:
            raise SystemExit(f"cli.py space failed: {printed.stderr.strip()}")
        space = work / "default.toml"
        space.write_text(printed.stdout)
        results["default_file"] = _search(work / "default-file", [*flags, "--space", str(space), "--no-retrain"])
        same = _trials(work / "no-file") == _trials(work / "default-file")
        results["a_same_trials"] = same
        print(f"(a) default space file read back: {len(_trials(work / 'default-file'))} trials, "
              f"{'the same' if same else 'NOT the same'} as without a file "
              f"({results['no_file']['seconds']:.0f} s and {results['default_file']['seconds']:.0f} s)")
    if "b" in parts:
        backbone = args.backbones.split(",")[0]
        narrow = work / "narrow.toml"
        narrow.write_text(f'[hyperparameters]\nbackbone = "{backbone}"\nhead_depth = {{min = 0, max = 1}}\n'
                          'learning_rate = {min = 3e-4, max = 3e-3, sampling = "log"}\n')
        rest = [f for f in flags if f != args.backbones and f != "--backbones"]
        results["narrow"] = _search(work / "narrow", [*rest, "--space", str(narrow), "--no-retrain"])
        trials = _trials(work / "narrow")
        inside = all(t["backbone"] == backbone and t["head_depth"] <= 1 and 3e-4 <= t["learning_rate"] <= 3e-3
                     for t, _ in trials)
        results["b_inside"] = inside
        print(f"(b) {backbone} fixed, head_depth 0..1, learning_rate 3e-4..3e-3: {results['narrow']['seconds']:.0f} s "
              f"against {results['no_file']['seconds']:.0f} s for the default space; {len(trials)} trials, "
              f"{'all' if inside else 'NOT all'} inside the ranges")
    if "c" in parts:
        keras_flags = ["--data", data, "--backbones", args.keras, "--image-size", str(args.image_size),
                       "--max-epochs", str(args.max_epochs), "--seed", str(args.seed)]
        results["keras_scratch"] = _search(work / "keras-none", [*keras_flags, "--weights", "none"], whole=True)
        results["keras_imagenet"] = _search(work / "keras-imagenet", [*keras_flags, "--weights", "imagenet"], whole=True)
        for key, label in (("keras_scratch", "--weights none"), ("keras_imagenet", "ImageNet")):
            r = results[key]
            what = (f"exported, test macro-F1 {r['macro_f1']:.3f}" if r["exported"]
                    else f"stopped: {r['last_line']}")
            print(f"(c) {args.keras} at {args.image_size} px, {label}: exit {r['status']}, {r['seconds']:.0f} s, {what}")
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def _cli(arguments: list[str], log: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "cli.py", *arguments]
    print(f"[{time.strftime('%H:%M:%S')}] {' '.join(command)}", flush=True)
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    log.write_text(done.stdout + done.stderr)
    return done


def _search(run_dir: Path, flags: list[str], whole: bool = False) -> dict:
    started = time.perf_counter()
    done = _cli(["search", "--run-dir", str(run_dir), *flags], run_dir.with_suffix(".log"))
    seconds = time.perf_counter() - started
    layout = RunLayout(run_dir)
    out = {"status": done.returncode, "seconds": seconds, "trials": len(_trials(run_dir))}
    if whole:
        lines = (done.stdout + done.stderr).strip().splitlines()
        out["exported"] = (layout.export / "model.keras").is_file()
        out["last_line"] = lines[-1] if lines else ""
        out["macro_f1"] = _macro_f1(layout)
    return out


def _trials(run_dir: Path) -> list[tuple[dict, float]]:
    """Each trial's searched values and score, in trial order."""
    found = []
    for path in sorted(RunLayout(run_dir).tuner.glob("trial_*/trial.json")):
        trial = json.loads(path.read_text())
        values = {k: v for k, v in trial["hyperparameters"]["values"].items() if not k.startswith("tuner/trial_id")}
        found.append((values, trial.get("score")))
    return found


def _macro_f1(layout: RunLayout) -> float:
    return test_figures(read_json(layout.metrics)).get("macro_f1", math.nan)


def _arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--backbones", default="mobilenet_025,vanilla_cnn")
    parser.add_argument("--keras", default="keras:MobileNetV3Small")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--max-epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", default="a,b,c")
    parser.add_argument("--work", default="bench-runs/space")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
