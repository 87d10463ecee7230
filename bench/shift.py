"""Acquisition shift: this project's job against the plain KerasTuner user, on films from elsewhere.

    python bench/shift.py --data ../shared/data/cxr3-dev --external ../shared/data/cxr3-external \\
        --work bench-runs/shift [--variant NAME="--flag value ..."]... [--no-reference]

Runs ``cxr-tuner search`` once per variant (default: one, the default job, with the
MobileNet 0.25 ImageNet settings of the issue) and the plain user (``bench/plain_user.py``,
trained on the first run's train+val films, its own 80/20 split by file), each in its own
process, timed. Every final model (``export/model.keras``) and the plain user then predict
the test split's films, each acquisition-shift family's rendering of them
(`cxr_tuner.data.shift`, the run's seed) and every ``--external`` set, all decoded by the
same code. Prints macro-F1 with bootstrap CIs (patient groups where known) and the worst
class's recall, the worst family, and the wall times; writes ``results.json`` into ``--work``.
Nothing is trained or chosen on the external sets or the renderings.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
JOB = ["--backbones", "mobilenet_025", "--weights", "imagenet", "--image-size", "224", "--max-epochs", "9",
       "--factor", "3"]


def main(argv=None) -> dict:
    args = _arguments(argv)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    variants = dict(v.split("=", 1) for v in args.variant) if args.variant else {"default": ""}
    times = {}
    for name, flags in variants.items():
        command = [sys.executable, "-m", "cxr_tuner", "search", "--data", args.data, "--run-dir", str(work / name),
                   "--seed", str(args.seed), *JOB, *shlex.split(flags)]
        times[name] = _run(command, work / f"{name}.log")
    first = work / next(iter(variants))
    sets = _scored_sets(first, args, work)
    predictions = {name: _predict_ours(work / name, sets) for name in variants}
    if not args.no_reference:
        times["plain user"], predictions["plain user"] = _plain_user(first, sets, args, work)
    results = {"settings": vars(args), "variants": variants, "seconds": times,
               "figures": {name: {where: _figures(sets[where], probs, where) for where, probs in by_set.items()}
                           for name, by_set in predictions.items()}}
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results, list(sets)))
    return results


def _run(command: list[str], log: Path) -> float:
    started = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if done.returncode:
        raise SystemExit(f"{shlex.join(command)} failed ({done.returncode}); see {log}")
    return time.perf_counter() - started


def _scored_sets(run: Path, args, work: Path) -> dict:
    """name -> {images, labels, groups, paths}: the test split, each family's rendering of it, each external set."""
    from cxr_tuner.data import labels as label_files, shift
    from cxr_tuner.data.images import decode_image

    config = json.loads((run / "config.json").read_text())
    names, size = list(config["class_names"]), int(config["image_size"])
    with open(run / "split.csv", newline="") as handle:
        test = [row for row in csv.DictReader(handle) if row["split"] == "test"]
    images = np.stack([decode_image(row["path"], size) for row in test])[..., None]
    base = {"labels": np.array([names.index(r["label"]) for r in test]), "groups": [r["group"] for r in test]}
    sets = {"test split": {**base, "images": images, "paths": [r["path"] for r in test]}}
    for family in shift.FAMILIES:
        rendered = shift.render(images, family, args.seed)
        folder = work / "renders" / family
        folder.mkdir(parents=True)
        paths = [str(folder / f"{i:05d}.png") for i in range(len(rendered))]
        for path, film in zip(paths, rendered):
            Image.fromarray(film[..., 0]).save(path)
        sets[f"shift: {family}"] = {**base, "images": rendered, "paths": paths}
    for root in args.external:
        table_ = label_files.read(root)
        kept = [e for e in table_.examples if e.label in names]
        sets[f"external: {Path(root).name}"] = {
            "images": np.stack([decode_image(e.path, size) for e in kept])[..., None],
            "labels": np.array([names.index(e.label) for e in kept]), "groups": [e.group or e.path for e in kept],
            "paths": [e.path for e in kept]}
    for entry in sets.values():
        entry["class_names"] = names
    return sets


def _predict_ours(run: Path, sets: dict) -> dict:
    import keras

    model = keras.saving.load_model(run / "export" / "model.keras", compile=False)
    return {where: model.predict(entry["images"], batch_size=64, verbose=0) for where, entry in sets.items()}


def _plain_user(run: Path, sets: dict, args, work: Path) -> tuple[float, dict]:
    tree = work / "plain-user-train"
    with open(run / "split.csv", newline="") as handle:
        for i, row in enumerate(r for r in csv.DictReader(handle) if r["split"] in ("train", "val")):
            (tree / row["label"]).mkdir(parents=True, exist_ok=True)
            (tree / row["label"] / f"{i:06d}-{Path(row['path']).name}").symlink_to(Path(row["path"]).resolve())
    heldout, spans = work / "plain-user-heldout.csv", {}
    with open(heldout, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        count = 0
        for where, entry in sets.items():
            for path, label in zip(entry["paths"], entry["labels"]):
                writer.writerow([Path(path).resolve(), entry["class_names"][label]])
            spans[where] = (count, count + len(entry["paths"]))
            count += len(entry["paths"])
    out = work / "plain-user.json"
    seconds = _run([sys.executable, str(HERE / "plain_user.py"), "--train", str(tree), "--heldout", str(heldout),
                    "--work", str(work / "plain-user"), "--out", str(out), "--seed", str(args.seed)],
                   work / "plain-user.log")
    result = json.loads(out.read_text())
    order = [result["class_names"].index(n) for n in next(iter(sets.values()))["class_names"]]
    probs = np.array(result["probabilities"])[:, order]
    return seconds, {where: probs[a:b] for where, (a, b) in spans.items()}


def _figures(entry: dict, probs: np.ndarray, where: str) -> dict:
    from cxr_tuner.search.figures.metrics import classification_metrics

    figures = classification_metrics(entry["labels"], probs, entry["class_names"], groups=entry["groups"])
    recalls = {n: c["recall"] for n, c in figures["per_class"].items() if c["support"]}
    worst = min(recalls, key=recalls.get)
    return {"n": figures["n"], "macro_f1": figures["macro_f1"], "accuracy": figures["accuracy"],
            "worst_class": worst, "worst_recall": recalls[worst], "ci_method": figures.get("ci_method")}


def table(results: dict, sets: list[str]) -> str:
    names = list(results["figures"])
    lines = ["| films | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]

    def cell(figure) -> str:
        f1 = figure["macro_f1"]
        return (f"{f1['value']:.3f} [{f1['ci95'][0]:.3f}, {f1['ci95'][1]:.3f}]; "
                f"{figure['worst_class']} recall {figure['worst_recall']:.2f}")

    for where in sets:
        lines.append(f"| {where} (n={results['figures'][names[0]][where]['n']}) | "
                     + " | ".join(cell(results["figures"][n][where]) for n in names) + " |")
    families = [w for w in sets if w.startswith("shift: ")]
    worst = {n: min(families, key=lambda w: results["figures"][n][w]["macro_f1"]["value"]) for n in names}
    lines.append("| worst family | " + " | ".join(
        f"{worst[n][7:]} {results['figures'][n][worst[n]]['macro_f1']['value']:.3f}" for n in names) + " |")
    lines.append("| mean over families | " + " | ".join(
        f"{np.mean([results['figures'][n][w]['macro_f1']['value'] for w in families]):.3f}" for n in names) + " |")
    lines.append("| whole job, wall | " + " | ".join(f"{results['seconds'][n]:.0f} s" for n in names) + " |")
    return "\n".join(lines)


def _arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the labelled collection the jobs train on")
    parser.add_argument("--external", action="append", default=[], help="a labelled set from other sources (repeatable)")
    parser.add_argument("--work", default="bench-runs/shift", help="output folder (emptied first)")
    parser.add_argument("--variant", action="append", default=[], metavar='NAME="FLAGS"',
                        help="a job of this project with these extra search flags (repeatable); default: the default job")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-reference", action="store_true", help="skip the plain KerasTuner user")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
