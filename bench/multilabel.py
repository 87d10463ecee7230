"""Multi-label findings: this project's whole job against a plain KerasTuner user, and the data stage at NIH's size.

    python bench/multilabel.py --work bench-runs/multilabel --films 3000 --heldout 1500 \\
        --image-size 96 --backbones mobilenet_025 --weights imagenet --max-epochs 9

1. A multi-label phantom collection (`data.synthetic_findings.write_multilabel_demo`: five findings
   at 30 / 15 / 8 / 3 / 1 % with co-occurrence, 1-4 films per patient) of ``--films``
   films, and a held-out one of ``--heldout`` films of other patients (another seed).
2. This project's whole job, one ``cli.py search`` process as a user runs it.
3. The plain user (``bench/multilabel_reference.py``): the same backbone and space, a
   random split by film, unweighted ``binary_crossentropy``, Hyperband on ``val_loss``.
4. Both final models scored on the held-out films, which neither saw: per-finding ROC AUC
   with patient-level bootstrap CIs (`search.figures.findings.label_metrics`), macro
   AUC, and the plain user's leak (patients in more than one of its splits).
5. The data stage (read, decode, near-duplicate audit, iterative split) of a
   ``--nih-rows`` NIH-format ``Data_Entry_2017.csv`` pointing at generated films.

Prints one table; writes ``results.json`` into ``--work``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

from run import _weights_in_keras_cache, run_step


def collections(work: Path, films: int, heldout: int, size: int, seed: int, rare_patients: int) -> tuple[Path, Path]:
    """The searched collection and the held-out one (other patients), as multi-hot CSVs."""
    from cxr_tuner.data import synthetic_findings

    pool = synthetic_findings.write_multilabel_demo(work / "pool", n_films=films, size=size, seed=seed,
                                                    min_positive_patients=rare_patients)
    held = synthetic_findings.write_multilabel_demo(work / "heldout", n_films=heldout, size=size, seed=seed + 1000,
                                                    min_positive_patients=rare_patients)
    return pool / synthetic_findings.MULTILABEL_CSV, held / synthetic_findings.MULTILABEL_CSV


def score(model_file: Path, csv_path: Path, size: int, seed: int, outputs=None, reference: bool = False) -> dict:
    """Per-finding AUC with patient-level CIs of a saved model on a multi-hot collection.

    ``outputs``: the findings the model answers, in its output order (the project's model
    card: a finding it dropped is not among them); None: every finding of the collection.
    ``reference``: the plain user's model, which reads films through its own tf.data loader
    (RGB floats, bilinear resize); the project's takes uint8 grey films as decoded here.
    """
    import keras

    import importlib

    importlib.import_module("cxr_tuner.hypermodels.layers")  # registers an ensemble's FindingTemperature, as the card says
    from multilabel_reference import _dataset, read_multihot
    from cxr_tuner.data.images import decode_image
    from cxr_tuner.search.figures import findings as multilabel

    paths, labels, patients, names = read_multihot(csv_path)
    model = keras.saving.load_model(model_file, compile=False)
    if reference:
        probs = model.predict(_dataset(paths, labels, size, 64, None), verbose=0)
    else:
        probs = model.predict(np.stack([decode_image(p, size)[..., None] for p in paths]), batch_size=64, verbose=0)
    probs = np.asarray(probs, dtype=np.float64)
    if outputs is not None:
        columns = [names.index(n) for n in outputs]
        labels, names = labels[:, columns], list(outputs)
        if probs.shape[1] != len(outputs):  # the plain user's model answers every finding: keep the same ones
            probs = probs[:, columns]
    metrics = multilabel.label_metrics(labels.astype(np.float64), probs, names, {n: 0.5 for n in names},
                                       groups=patients, seed=seed)
    return {"names": names, "per_label": {n: metrics["per_label"][n]["roc_auc"] for n in names},
            "macro_auc": metrics["macro_auc"], "prevalence": {n: float(labels[:, i].mean()) for i, n in enumerate(names)}}


def data_stage(work: Path, rows: int, seed: int) -> dict:
    """Seconds of the data stage on an NIH-format label file of ``rows`` distinct generated films."""
    from PIL import Image

    from cxr_tuner.data import synthetic_nih
    from cxr_tuner.search.engine import dataset
    from cxr_tuner.search.engine.config import new_config

    root = work / "nih"
    csv_path = synthetic_nih.write_nih_label_file(root, rows, seed=seed, write_films=False)
    folder = root / "images_001" / "images"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [line.split(",", 1)[0] for line in csv_path.read_text().splitlines()[1:]]
    started = time.perf_counter()
    for name in names:  # distinct films: identical ones would be one near-duplicate group
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(folder / name)
    written = time.perf_counter() - started
    config = new_config(str(work / "nih-run"), data=str(csv_path), image_size=32, weights="none",
                        backbones=("vanilla_cnn",), task="auto", min_positive_groups=5)
    started = time.perf_counter()
    data = dataset.prepare(config, progress=False)
    seconds = time.perf_counter() - started
    return {"rows": rows, "films_written_seconds": written, "data_stage_seconds": seconds,
            "findings_kept": list(data.config.class_names), "dropped": data.findings.labels.get("dropped", []),
            "splits": {s: int((data.splits == s).sum()) for s in ("train", "val", "test")}}


def main(argv=None) -> dict:
    args = _parser().parse_args(argv)
    work = Path(args.work)
    if work.exists() and not args.keep:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    results = {"settings": vars(args)}
    pool, held = collections(work, args.films, args.heldout, args.image_size, args.seed, args.rare_patients)
    flags = ["--backbones", args.backbones, "--weights", args.weights, "--image-size", str(args.image_size),
             "--max-epochs", str(args.max_epochs), "--factor", str(args.factor), "--seed", str(args.seed)]
    project_dir, reference_dir = work / "project", work / "reference"
    steps = _steps(work, args, pool, project_dir, reference_dir, flags)
    card = json.loads((project_dir / "export" / "model_card.json").read_text())
    results["project"] = {**steps["project"], "summary": json.loads((project_dir / "summary.json").read_text()),
                          "heldout": score(project_dir / "export" / "model.keras", held, args.image_size, args.seed,
                                           card["class_names"])}
    saved = json.loads((work / "reference.json").read_text())
    results["reference"] = {**steps["reference"], "leak": saved["leak"],
                            "heldout": score(reference_dir / "model.keras", held, args.image_size, args.seed,
                                             reference=True)}
    kept = results["project"]["heldout"]["names"]
    if kept != results["reference"]["heldout"]["names"]:  # the macro AUC over the findings both answer
        results["reference"]["macro_auc_same_findings"] = score(reference_dir / "model.keras", held, args.image_size,
                                                                args.seed, kept, reference=True)["macro_auc"]
    if args.nih_rows:
        results["data_stage"] = data_stage(work, args.nih_rows, args.seed)
    (work / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    _print(results)
    return results


def _steps(work: Path, args, pool: Path, project_dir: Path, reference_dir: Path, flags) -> dict:
    """Runs both jobs (or with ``--score-only`` reads what they took); their seconds and peak RSS, in ``steps.json``."""
    saved = work / "steps.json"
    if args.score_only:
        return json.loads(saved.read_text())
    steps = {}
    shutil.rmtree(project_dir, ignore_errors=True)
    job = run_step("project", [sys.executable, "cli.py", "search", "--data", str(pool), "--run-dir", str(project_dir),
                               *flags], work / "project.log")
    steps["project"] = {"seconds": job["seconds"], "peak_rss_mb": job["peak_rss_mb"]}
    saved.write_text(json.dumps(steps, indent=2) + "\n")
    _weights_in_keras_cache()  # plain Keras looks for ImageNet weights there, and there is no network
    job = run_step("reference", [sys.executable, "bench/multilabel_reference.py", "--csv", str(pool), "--work",
                                 str(reference_dir), "--image-size", str(args.image_size), "--max-epochs",
                                 str(args.max_epochs), "--factor", str(args.factor), "--seed", str(args.seed),
                                 "--backbones", args.backbones, "--weights", args.weights,
                                 "--out", str(work / "reference.json")], work / "reference.log")
    steps["reference"] = {"seconds": job["seconds"], "peak_rss_mb": job["peak_rss_mb"]}
    saved.write_text(json.dumps(steps, indent=2) + "\n")
    return steps


def _ci(figure: dict | None) -> str:
    if not figure or figure.get("value") is None:
        return "n/a"
    low, high = figure.get("ci95") or (None, None)
    return f"{figure['value']:.3f} [{low:.3f}, {high:.3f}]" if low is not None else f"{figure['value']:.3f}"


def _print(results: dict) -> None:
    ours, theirs = results["project"]["heldout"], results["reference"]["heldout"]
    print(f"{'finding':<15} {'prevalence':>10}  {'project AUC [95% CI]':<26} {'plain user AUC [95% CI]':<26} gap")
    for name in theirs["names"]:
        a, b = ours["per_label"].get(name, {"reason": "dropped by the project"}), theirs["per_label"][name]
        gap = (a["value"] - b["value"]) if a.get("value") is not None and b.get("value") is not None else None
        print(f"{name:<15} {theirs['prevalence'][name]:>10.3f}  {_ci(a):<26} {_ci(b):<26} "
              + (f"{gap:+.3f}" if gap is not None else "n/a"))
    print(f"{'macro AUC':<26}  {_ci(ours['macro_auc']):<26} {_ci(theirs['macro_auc']):<26}")
    if "macro_auc_same_findings" in results["reference"]:
        print(f"{'  same findings':<26}  {'':<26} {_ci(results['reference']['macro_auc_same_findings']):<26}")
    p, r = results["project"]["seconds"], results["reference"]["seconds"]
    print(f"whole job: project {p:.0f} s, plain user {r:.0f} s ({r / p:.2f}x)")
    leak = results["reference"]["leak"]
    print(f"plain user's split by film: {leak}")
    if "data_stage" in results:
        stage = results["data_stage"]
        print(f"data stage on a {stage['rows']}-row NIH label file: {stage['data_stage_seconds']:.1f} s "
              f"(films written in {stage['films_written_seconds']:.1f} s), kept {len(stage['findings_kept'])} findings, "
              f"splits {stage['splits']}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="bench-runs/multilabel", help="output folder (emptied first)")
    parser.add_argument("--films", type=int, default=3000)
    parser.add_argument("--heldout", type=int, default=1500)
    parser.add_argument("--rare-patients", type=int, default=40,
                        help="positive patients each finding gets at least, in each collection")
    parser.add_argument("--backbones", default="mobilenet_025")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--max-epochs", type=int, default=9)
    parser.add_argument("--factor", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nih-rows", type=int, default=100_000, help="0: skip the data-stage timing")
    parser.add_argument("--keep", action="store_true", help="do not empty --work first (reuse the collections)")
    parser.add_argument("--score-only", action="store_true",
                        help="with --keep: score the jobs of an earlier run of this bench again (steps.json)")
    return parser


if __name__ == "__main__":
    main()
