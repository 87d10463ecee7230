"""Measurements on a run directory of this project, each in its own process.

    python bench/measure.py floor RUN_DIR BACKBONE   # one forward pass over every image
    python bench/measure.py retrain RUN_DIR          # `cli.py retrain RUN_DIR --no-augment`, timed
    python bench/measure.py score RUN_DIR            # the retrained winner on the test split
    python bench/measure.py heldout RUN_DIR CSV      # the final model on other films (path,label; absolute paths)

Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
from sklearn.metrics import f1_score, recall_score

from cxr_tuner.hypermodels.cutting import frozen_image_model, frozen_model
from cxr_tuner.hypermodels.classifier import POOLED, XrayClassifier
from cxr_tuner.search.engine import dataset
from cxr_tuner.search.engine.config import load_config
from cxr_tuner.search.engine.layout import RunLayout
from cxr_tuner.search.final.retrain import retrain as retrain_winners
from cxr_tuner.search.engine.task import task_of

BATCH = 64


def floor(run_dir: str, backbone: str) -> dict:
    """Seconds of one forward pass of the frozen backbone over every decoded image."""
    config = load_config(run_dir)
    data = dataset.prepare(config, progress=False)
    classifier = XrayClassifier(len(config.class_names), config.image_size, (backbone,), config.weights,
                                space=config.search_space(), findings=task_of(config).findings(config),
                                specs=config.backbone_specs)
    model = frozen_model(frozen_image_model(classifier, backbone), None, [POOLED])
    model.predict_on_batch(np.asarray(data.images[:BATCH]))  # trace once, not timed
    start = time.perf_counter()
    for begin in range(0, len(data.images), BATCH):
        model.predict_on_batch(np.asarray(data.images[begin:begin + BATCH]))
    seconds = time.perf_counter() - start
    return {"floor_seconds": seconds, "images": len(data.images), "images_per_second": len(data.images) / seconds}


def retrain(run_dir: str) -> dict:
    """Seconds of the retrain of the search's winners (defaults, no augmentation).

    Timed after the imports, as the reference's retrain is (it runs in its search's
    process); reading the run's data and caches is inside the timing.
    """
    start = time.perf_counter()
    summary = retrain_winners(load_config(run_dir), augment=False, log=lambda line: None)
    return {"retrain_seconds": time.perf_counter() - start, "winners": len(summary["winners"])}


def score(run_dir: str) -> dict:
    """Test macro-F1 and COVID sensitivity of the run's rank-1 winner (scikit-learn)."""
    config = load_config(run_dir)
    data = dataset.prepare(config, progress=False)
    model = keras.saving.load_model(RunLayout(run_dir).best_winner() / "model.keras", compile=False)
    rows = data.indices("test")
    y_true = data.labels[rows]
    y_pred = np.argmax(model.predict(np.asarray(data.images[rows]), batch_size=BATCH, verbose=0), 1)
    covid = list(config.class_names).index("COVID")
    return {"test_macro_f1": float(f1_score(y_true, y_pred, average="macro")),
            "covid_sensitivity": float(recall_score(y_true == covid, y_pred == covid))}


def heldout(run_dir: str, csv_file: str) -> dict:
    """The final model (as the job assembled it) on films no stage of the run has read.

    Figures as `evaluate` writes them (bootstrap CIs), and the operating point's
    sensitivity and specificity at the run's own threshold.
    """
    import csv

    from cxr_tuner.data import cache
    from cxr_tuner.data.manifest import Example, normalise_label
    from cxr_tuner.hypermodels import ensemble
    from cxr_tuner.search.figures import operating_point
    from cxr_tuner.search.figures.metrics import classification_metrics

    config = load_config(run_dir)
    layout = RunLayout(run_dir)
    with open(csv_file, newline="") as handle:
        examples = [Example(row["path"], normalise_label(row["label"])) for row in csv.DictReader(handle)]
    decoded = cache.load_decoded(examples, config.image_size, Path(csv_file).parent / "heldout-cache", progress=False)
    labels = np.array([list(config.class_names).index(e.label) for e in decoded.examples])
    model = keras.saving.load_model(layout.final_model() / "model.keras", compile=False)
    probs = ensemble.predict(model, decoded.images)
    metrics = classification_metrics(labels, probs, config.class_names, seed=config.seed)
    point = json.loads(layout.final_record.read_text()).get("operating_point") if layout.has_final() else None
    figures = None
    if point:
        index = list(config.class_names).index(point["class"])
        figures = operating_point.figures(labels, probs, index, point["threshold"], seed=config.seed)
    return {"n": int(len(labels)), "macro_f1": metrics["macro_f1"], "accuracy": metrics["accuracy"],
            "covid_sensitivity": metrics["covid_sensitivity"], "covid_specificity": metrics["covid_specificity"],
            "ece": metrics["ece"]["value"], "operating_point": figures}


if __name__ == "__main__":
    what, *args = sys.argv[1:]
    print(json.dumps({"floor": floor, "retrain": retrain, "score": score, "heldout": heldout}[what](*args)))
