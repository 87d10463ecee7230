"""The multi-label reference: findings learnt the way a plain KerasTuner user would.

Reads a multi-hot CSV (``path,<finding>...,patient_id``, paths relative to the CSV's
folder), splits it at random BY IMAGE 70/15/15 (no patient grouping, as most tutorials
do), loads the films with ``tf.data`` and builds the same backbones and search space
as ``bench/reference.py`` with a sigmoid head, unweighted ``binary_crossentropy``;
plain ``keras_tuner.Hyperband`` on ``val_loss``, then the best hyperparameters
retrained (early stopping on ``val_loss``) and each finding's test AUC from
scikit-learn. ``leaked_patients`` counts what the split by image leaks.

    python bench/multilabel_reference.py --csv DEMO/labels.csv --work DIR --out result.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import keras_tuner
import numpy as np
import tensorflow as tf
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from reference import TransferHyperModel  #the single-label reference's; nothing of the project)

SPLITS = ("train", "val", "test")


class MultiLabelHyperModel(TransferHyperModel):
    """``bench/reference.py``'s model and space (backbone, unfreeze depth, head, dropout,
    learning rate) with one sigmoid output per finding and ``binary_crossentropy``."""

    activation, loss = "sigmoid", "binary_crossentropy"

    def metrics(self) -> list:
        return [keras.metrics.AUC(multi_label=True, name="auc")]


def read_multihot(csv_path) -> tuple[list[str], np.ndarray, list[str], list[str]]:
    """``(absolute paths, 0/1 labels (N, K), patient ids, finding names)`` of a multi-hot CSV."""
    csv_path = Path(csv_path)
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        findings = [name for name in reader.fieldnames if name not in ("path", "patient_id")]
        rows = list(reader)
    paths = [str((csv_path.parent / row["path"]).resolve()) for row in rows]
    labels = np.array([[int(row[name]) for name in findings] for row in rows], dtype=np.float32)
    return paths, labels, [row.get("patient_id", "") for row in rows], findings


def split_by_image(n: int, seed: int = 0, fractions=(0.7, 0.15, 0.15)) -> np.ndarray:
    """``"train"``/``"val"``/``"test"`` per film: scikit-learn's ``train_test_split`` twice, no groups."""
    index = np.arange(n)
    train, rest = train_test_split(index, train_size=fractions[0], random_state=seed)
    val, test = train_test_split(rest, train_size=fractions[1] / (fractions[1] + fractions[2]), random_state=seed)
    splits = np.empty(n, dtype=object)
    splits[train], splits[val], splits[test] = "train", "val", "test"
    return splits


def leaked_patients(patients, splits) -> dict:
    """What a split leaks: patients with films in more than one split, and test films
    whose patient also has films in train."""
    parts: dict[str, set] = {}
    for patient, split in zip(patients, splits):
        parts.setdefault(patient, set()).add(split)
    leaked = sorted(p for p, where in parts.items() if len(where) > 1)
    in_train = {p for p, where in parts.items() if "train" in where}
    test = [p for p, split in zip(patients, splits) if split == "test"]
    return {"patients": len(parts), "leaked_patients": len(leaked),
            "leaked_share": len(leaked) / max(len(parts), 1),
            "test_films": len(test), "test_films_with_patient_in_train": sum(p in in_train for p in test)}


def _dataset(paths, labels, size: int, batch_size: int, shuffle_seed: int | None) -> tf.data.Dataset:
    """Films decoded to RGB and resized (bilinear), batched with their multi-hot labels."""
    def load(path, label):
        image = tf.io.decode_png(tf.io.read_file(path), channels=3)
        return tf.image.resize(image, (size, size)), label

    data = tf.data.Dataset.from_tensor_slices((list(paths), labels))
    if shuffle_seed is not None:
        data = data.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)
    return data.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def run_reference(csv_path, run_dir, image_size: int = 224, max_epochs: int = 9, seed: int = 0,
                  backbone="mobilenet_025", weights="imagenet", factor: int = 3, batch_size: int = 32) -> dict:
    """Searches, retrains and scores the plain-KerasTuner multi-label model on ``csv_path``.

    Args:
        csv_path: Multi-hot CSV (``path,<finding>...,patient_id``).
        run_dir: Folder for the tuner's trials and ``result.json``.
        image_size: Square input side in pixels.
        max_epochs: Hyperband's ``max_epochs`` (the retrain runs up to twice that).
        seed: Seed of the split, the tuner and the training.
        backbone: Name of ``bench.reference.BACKBONES``, or several (a list or comma-separated).
        weights: ``"imagenet"``, a weights file, or ``None``/``"none"`` for random weights.
        factor: Hyperband's reduction factor.
        batch_size: Films per batch.

    Returns:
        The figures: ``test_auc`` (finding -> AUC, None where the test split holds one
        class only), ``macro_auc``, ``test_rows`` (path, patient_id and labels of each
        test film), ``test_probabilities``, ``leak`` (``leaked_patients``), the split's
        sizes, the best hyperparameters, ``trials`` and the wall seconds (``search_seconds``
        from the call, ``retrain_seconds``, ``wall_seconds``); also written to
        ``run_dir/result.json``.
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    paths, labels, patients, findings = read_multihot(csv_path)
    splits = split_by_image(len(paths), seed)
    part = {name: np.flatnonzero(splits == name) for name in SPLITS}

    def data(name, shuffle_seed=None):
        return _dataset([paths[i] for i in part[name]], labels[part[name]], image_size, batch_size, shuffle_seed)

    train, val, test = data("train", seed), data("val"), data("test")
    keras.utils.set_random_seed(seed)
    backbones = backbone.split(",") if isinstance(backbone, str) else list(backbone)
    weights = None if weights in (None, "none") else weights
    hypermodel = MultiLabelHyperModel(backbones, weights, image_size, len(findings))
    tuner = keras_tuner.Hyperband(hypermodel, objective="val_loss", max_epochs=max_epochs, factor=factor, seed=seed,
                                  directory=str(run_dir), project_name="tuner", overwrite=True)
    tuner.search(train, validation_data=val, epochs=max_epochs, verbose=0)
    search_seconds = time.perf_counter() - started
    best = tuner.get_best_hyperparameters(1)[0]
    start = time.perf_counter()
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = hypermodel.build(best)
    stop = keras.callbacks.EarlyStopping("val_loss", patience=3, restore_best_weights=True)
    model.fit(train, validation_data=val, epochs=2 * max_epochs, callbacks=[stop], verbose=0)
    retrain_seconds = time.perf_counter() - start
    model.save(run_dir / "model.keras")  # for scoring on films neither model saw
    probs = model.predict(test, verbose=0)
    y_true = labels[part["test"]]
    test_auc = {name: (float(roc_auc_score(y_true[:, k], probs[:, k])) if len(set(y_true[:, k])) == 2 else None)
                for k, name in enumerate(findings)}
    scored = [auc for auc in test_auc.values() if auc is not None]
    result = {
        "findings": findings, "test_auc": test_auc, "macro_auc": float(np.mean(scored)) if scored else None,
        "split_sizes": {name: int(part[name].size) for name in SPLITS},
        "leak": leaked_patients(patients, splits),
        "search_seconds": search_seconds, "retrain_seconds": retrain_seconds,
        "wall_seconds": time.perf_counter() - started,
        "trials": sum(t.status == "COMPLETED" for t in tuner.oracle.trials.values()),
        "best_hyperparameters": best.values,
        "test_rows": [{"path": paths[i], "patient_id": patients[i], **dict(zip(findings, labels[i].astype(int).tolist()))}
                      for i in part["test"]],
        "test_probabilities": probs.tolist(),
    }
    (run_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", required=True, help="multi-hot CSV: path,<finding>...,patient_id")
    parser.add_argument("--work", required=True, help="folder for the tuner and result.json")
    parser.add_argument("--out", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--backbones", default="mobilenet_025")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--max-epochs", type=int, default=9)
    parser.add_argument("--factor", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = run_reference(args.csv, args.work, args.image_size, args.max_epochs, args.seed, args.backbones,
                           args.weights, args.factor, args.batch_size)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("test_auc", "macro_auc", "leak", "wall_seconds")}))
    return result


if __name__ == "__main__":
    main()
