"""Multi-label findings: this project's whole job against a plain KerasTuner user, and the data stage at NIH's size.

    python bench/multilabel.py --work bench-runs/multilabel --films 3000 --heldout 1500 \\
        --image-size 96 --backbones mobilenet_025 --weights imagenet --max-epochs 9

1. A multi-label phantom collection (`data.synthetic.write_multilabel_demo`: five findings
   at 30 / 15 / 8 / 3 / 1 % with co-occurrence, 1-4 films per patient) of ``--films``
   films, and a held-out one of ``--heldout`` films of other patients (another seed).
2. This project's whole job, one ``cli.py search`` process as a user runs it.
3. The plain user (``bench/multilabel_reference.py``): the same backbone and space, a
   random split by film, unweighted ``binary_crossentropy``, Hyperband on ``val_loss``.
4. Both final models scored on the held-out films, which neither saw: per-finding ROC AUC
   with patient-level bootstrap CIs (`search.evaluation.multilabel.label_metrics`), macro
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
sys.path.insert(0, str(REPO))

from bench.run import run_step  # noqa: E402


def collections(work: Path, films: int, heldout: int, size: int, seed: int, rare_patients: int) -> tuple[Path, Path]:
    """The searched collection and the held-out one (other patients), as multi-hot CSVs."""
    from data import synthetic

    pool = synthetic.write_multilabel_demo(work / "pool", n_films=films, size=size, seed=seed,
                                           min_positive_patients=rare_patients)
    held = synthetic.write_multilabel_demo(work / "heldout", n_films=heldout, size=size, seed=seed + 1000,
                                           min_positive_patients=rare_patients)
    return pool / synthetic.MULTILABEL_CSV, held / synthetic.MULTILABEL_CSV


def score(model_file: Path, csv_path: Path, size: int, seed: int, outputs=None) -> dict:
    """Per-finding AUC with patient-level CIs of a saved model on a multi-hot collection.

    ``outputs``: the findings the model answers, in its output order (the project's model
    card: a finding it dropped is not among them); None: every finding of the collection.
    """
    import keras

    import hypermodels.layers  # noqa: F401  (an ensemble's FindingTemperature, as the model card says)
    from bench.multilabel_reference import read_multihot
    from data.images import decode_image
    from search.evaluation import multilabel

    paths, labels, patients, names = read_multihot(csv_path)
    if outputs is not None:
        labels, names = labels[:, [names.index(n) for n in outputs]], list(outputs)
    images = np.stack([decode_image(p, size)[..., None] for p in paths])
    model = keras.saving.load_model(model_file, compile=False)
    probs = np.asarray(model.predict(images, batch_size=64, verbose=0), dtype=np.float64)
    metrics = multilabel.label_metrics(labels.astype(np.float64), probs, names, {n: 0.5 for n in names},
                                       groups=patients, seed=seed)
    return {"names": names, "per_label": {n: metrics["per_label"][n]["roc_auc"] for n in names},
            "macro_auc": metrics["macro_auc"], "prevalence": {n: float(labels[:, i].mean()) for i, n in enumerate(names)}}


def data_stage(work: Path, rows: int, seed: int) -> dict:
    """Seconds of the data stage on an NIH-format label file of ``rows`` distinct generated films."""
    from PIL import Image

    from data import synthetic
    from search import dataset
    from search.config import new_config

    root = work / "nih"
    csv_path = synthetic.write_nih_label_file(root, rows, seed=seed, write_films=False)
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
    elif args.keep:  # the project's job again, from the start (the collections are reused as they are)
        shutil.rmtree(work / "project", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    results = {"settings": vars(args)}
    pool, held = collections(work, args.films, args.heldout, args.image_size, args.seed, args.rare_patients)
    flags = ["--backbones", args.backbones, "--weights", args.weights, "--image-size", str(args.image_size),
             "--max-epochs", str(args.max_epochs), "--factor", str(args.factor), "--seed", str(args.seed)]
    project_dir = work / "project"
    job = run_step("project", [sys.executable, "cli.py", "search", "--data", str(pool), "--run-dir", str(project_dir),
                               *flags], work / "project.log")
    results["project"] = {"seconds": job["seconds"], "peak_rss_mb": job["peak_rss_mb"],
                          "heldout": score(project_dir / "export" / "model.keras", held, args.image_size, args.seed,
                                           json.loads((project_dir / "export" / "model_card.json").read_text())
                                           ["class_names"]),
                          "summary": json.loads((project_dir / "summary.json").read_text())
                          if (project_dir / "summary.json").is_file() else None}
    reference_dir = work / "reference"
    ref = run_step("reference", [sys.executable, "bench/multilabel_reference.py", "--csv", str(pool), "--work",
                                 str(reference_dir), "--image-size", str(args.image_size), "--max-epochs",
                                 str(args.max_epochs), "--factor", str(args.factor), "--seed", str(args.seed),
                                 "--backbones", args.backbones, "--weights", args.weights,
                                 "--out", str(work / "reference.json")], work / "reference.log")
    saved = json.loads((work / "reference.json").read_text())
    results["reference"] = {"seconds": ref["seconds"], "peak_rss_mb": ref["peak_rss_mb"], "leak": saved["leak"],
                            "heldout": score(reference_dir / "model.keras", held, args.image_size, args.seed)}
    kept = results["project"]["heldout"]["names"]
    if kept != results["reference"]["heldout"]["names"]:  # the macro AUC over the findings both answer
        results["reference"]["macro_auc_same_findings"] = _macro_of(reference_dir / "model.keras", held, args, kept)
    if args.nih_rows:
        results["data_stage"] = data_stage(work, args.nih_rows, args.seed)
    (work / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    _print(results)
    return results


def _macro_of(model_file: Path, held: Path, args, kept) -> dict:
    """The macro AUC (with its CI) of the plain user's model over only the findings the project kept."""
    import keras

    from bench.multilabel_reference import read_multihot
    from data.images import decode_image
    from search.evaluation import multilabel

    paths, labels, patients, names = read_multihot(held)
    images = np.stack([decode_image(p, args.image_size)[..., None] for p in paths])
    probs = np.asarray(keras.saving.load_model(model_file, compile=False).predict(images, batch_size=64, verbose=0))
    columns = [names.index(n) for n in kept]
    metrics = multilabel.label_metrics(labels[:, columns].astype(np.float64), probs[:, columns].astype(np.float64),
                                       kept, {n: 0.5 for n in kept}, groups=patients, seed=args.seed)
    return metrics["macro_auc"]


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
    parser.add_argument("--keep", action="store_true", help="do not empty --work first")
    return parser


if __name__ == "__main__":
    main()
