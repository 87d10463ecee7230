"""Single-split search against ``--folds K`` on a small collection, scored on the same held-out films.

    python bench/folds.py --data ../shared/data/cxr3-dev --subset 300 --seeds 0,1,2 --folds 5 \\
        --image-size 96 --max-epochs 4 --work /tmp/bench-folds

A stratified, patient-grouped subset of about ``--subset`` films is the whole collection
each run sees; the other films (no patient in common) are a fixed held-out set. Per seed,
the same ``cli.py search --no-retrain`` and ``cli.py retrain`` (top 3) run twice, without
and with ``--folds``; the final model (ensemble, temperature, threshold: on validation,
or with folds on out-of-fold predictions) is assembled and scored on the held-out films.
Prints each seed's held-out macro F1 and the spread (std, range) of both; writes
``results.json`` into ``--work``.

``--timing`` prices folds instead: on the whole collection (no subset, nothing scored), the
same ``search --no-retrain`` without and with ``--folds``, and the search stage's wall
seconds of each (from ``summary.json``) and their ratio:

    python bench/folds.py --timing --data ../shared/data/cxr3-dev --image-size 224 --max-epochs 9
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

REPO = Path(__file__).resolve().parents[1]


def write_subset(data: Path, subset: int, work: Path) -> tuple[Path, list[dict]]:
    """A copy of about ``subset`` films (one StratifiedGroupKFold fold) with its ``metadata.csv``, and the other rows.

    The search reads a CSV's images only inside its folder, hence the copy.
    """
    with open(data / "metadata.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    labels = [row["label"] for row in rows]
    # Films without a patient id are each their own patient, as the search treats them.
    groups = [row["patient_id"] or f"film-{i}" for i, row in enumerate(rows)]
    splitter = StratifiedGroupKFold(n_splits=max(2, round(len(rows) / subset)), shuffle=True, random_state=0)
    _, chosen = next(splitter.split(rows, labels, groups))
    chosen = set(chosen.tolist())
    folder = work / "subset"
    for i in sorted(chosen):
        target = folder / rows[i]["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data / rows[i]["path"], target)
    with open(folder / "metadata.csv", "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[i] for i in sorted(chosen))
    heldout = [{**row, "path": str(data / row["path"])} for i, row in enumerate(rows) if i not in chosen]
    return folder / "metadata.csv", heldout


def run(command: list[str], log: Path) -> float:
    """Runs a ``cli.py`` command; its output goes to ``log``. Returns its wall seconds."""
    start = time.perf_counter()
    with open(log, "w") as out:
        status = subprocess.call([sys.executable, "cli.py", *command], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    if status:
        raise SystemExit(f"{' '.join(command[:2])} failed; see {log}")
    return time.perf_counter() - start


def score(run_dir: Path, heldout: list[dict], work: Path) -> dict:
    """Assembles the run's final model (as `evaluate` does) and scores it on the held-out films."""
    import keras
    from sklearn.metrics import f1_score

    from cxr_tuner.data import cache
    from cxr_tuner.data.manifest import Example, normalise_label
    from cxr_tuner.search.final import assemble
    from cxr_tuner.hypermodels import ensemble
    from cxr_tuner.search.engine.config import load_config
    from cxr_tuner.search.engine.layout import WINNER_MODEL

    config = load_config(run_dir)
    record = assemble.assemble(config, log=lambda line: None)
    examples = [Example(row["path"], normalise_label(row["label"]), row["patient_id"], source=row["source"])
                for row in heldout]
    decoded = cache.load_decoded(examples, config.image_size, work / "heldout-cache", progress=False)
    labels = np.array([list(config.class_names).index(e.label) for e in decoded.examples])
    model = keras.saving.load_model(config.layout.final / WINNER_MODEL, compile=False)
    probs = ensemble.predict(model, decoded.images)
    keras.backend.clear_session()
    return {"macro_f1": float(f1_score(labels, probs.argmax(1), average="macro")),
            "accuracy": float((probs.argmax(1) == labels).mean()), "heldout_images": len(labels),
            "ensemble_size": record["ensemble_size"], "temperature": record["temperature"],
            "winner": json.loads(config.layout.winners_summary.read_text())["winners"][0]["hyperparameters"]}


def search_seconds(run_dir: Path) -> float:
    """The search stage's wall seconds, as the run recorded them."""
    return json.loads((run_dir / "summary.json").read_text())["stages"]["search"]["seconds"]


def timing(args) -> None:
    """Search-stage wall seconds of one split and of ``--folds K`` on the same data, and their ratio."""
    found = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for mode, extra in (("single", []), (f"folds {args.folds}", ["--folds", str(args.folds)])):
            run_dir = args.work / f"timing-{mode.replace(' ', '')}-seed{seed}"
            run(["search", "--data", str(args.data), "--run-dir", str(run_dir), "--backbones", "mobilenet_025",
                 "--weights", "imagenet", "--image-size", str(args.image_size), "--max-epochs", str(args.max_epochs),
                 "--seed", str(seed), "--overwrite", "--no-retrain", *extra], args.work / f"{run_dir.name}.log")
            found[mode, seed] = search_seconds(run_dir)
        single, folded = found["single", seed], found[f"folds {args.folds}", seed]
        print(f"seed {seed}: search {single:.1f} s single split, {folded:.1f} s --folds {args.folds}: "
              f"{folded / single:.2f}x", flush=True)
    (args.work / "timing.json").write_text(json.dumps({f"{m} seed {s}": v for (m, s), v in found.items()}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="cxr3-dev: class folders and metadata.csv")
    parser.add_argument("--subset", type=int, default=300)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--max-epochs", type=int, default=4)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-folds"))
    parser.add_argument("--timing", action="store_true", help="price --folds on the whole collection instead")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.timing:
        return timing(args)
    subset, heldout = write_subset(args.data, args.subset, args.work)
    print(f"subset {sum(1 for _ in open(subset)) - 1} films, held out {len(heldout)}", flush=True)
    results = {"single": {}, f"folds {args.folds}": {}}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for mode, extra in (("single", []), (f"folds {args.folds}", ["--folds", str(args.folds)])):
            run_dir = args.work / f"{mode.replace(' ', '')}-seed{seed}"
            common = ["--data", str(subset), "--run-dir", str(run_dir), "--backbones", "mobilenet_025",
                      "--weights", "imagenet", "--image-size", str(args.image_size),
                      "--max-epochs", str(args.max_epochs), "--seed", str(seed), "--overwrite", *extra]
            seconds = run(["search", *common, "--no-retrain"], args.work / f"{run_dir.name}-search.log")
            seconds += run(["retrain", str(run_dir)], args.work / f"{run_dir.name}-retrain.log")
            result = {**score(run_dir, heldout, args.work), "search_and_retrain_seconds": seconds}
            results[mode][seed] = result
            print(f"seed {seed} {mode:>8}: held-out macro F1 {result['macro_f1']:.4f} accuracy "
                  f"{result['accuracy']:.4f} (ensemble of {result['ensemble_size']}, {seconds:.0f} s)", flush=True)
    for mode, by_seed in results.items():
        f1 = np.array([r["macro_f1"] for r in by_seed.values()])
        print(f"{mode:>8}: macro F1 mean {f1.mean():.4f}, std {f1.std(ddof=1):.4f}, range {f1.max() - f1.min():.4f} "
              f"({', '.join(f'{v:.4f}' for v in f1)})")
    (args.work / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
