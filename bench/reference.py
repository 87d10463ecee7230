"""The reference: the same job done the way a KerasTuner user would, without this project.

``keras.utils.image_dataset_from_directory`` on symlink trees of the given split
(``split.csv``: path,label,...,split), a HyperModel with the same search space
(backbone, head depth and widths, dropout, learning rate, unfreeze depth; the
frozen backbone called with ``training=False`` as in keras.io's transfer-learning
guide), plain ``keras_tuner.Hyperband`` on ``val_loss`` with ``class_weight``, then
the best hyperparameters retrained (early stopping on ``val_loss``) and scored on
the test split with scikit-learn. Writes its figures as JSON.

Deliberately imports nothing from this project.

    python bench/reference.py --split RUN/split.csv --work DIR --out result.json
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # the search's wall time counts imports, as a CLI run's does

import argparse
import csv
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import keras_tuner
import numpy as np
from sklearn.metrics import f1_score, recall_score
from sklearn.utils.class_weight import compute_class_weight

# name: (constructor, [-1, 1] input?, cut layers from the top down), as a user would write it.
BACKBONES = {
    "mobilenet_025": (lambda **kw: keras.applications.MobileNet(alpha=0.25, **kw), True,
                      ("conv_pw_12_relu", "conv_pw_11_relu", "conv_pw_10_relu")),
    "mobilenet": (keras.applications.MobileNet, True,
                  ("conv_pw_12_relu", "conv_pw_11_relu", "conv_pw_10_relu")),
    "mobilenet_v2": (keras.applications.MobileNetV2, True, ("block_15_add", "block_14_add", "block_12_add")),
}


class TransferHyperModel(keras_tuner.HyperModel):
    """Backbone + GAP + dense head; the top ``unfreeze_depth`` blocks train."""

    activation, loss = "softmax", "categorical_crossentropy"  # a multi-label user's: sigmoid, binary

    def metrics(self) -> list:
        return ["accuracy"]

    def __init__(self, backbones, weights, size, num_classes):
        super().__init__()
        self.backbones, self.weights, self.size, self.num_classes = backbones, weights, size, num_classes

    def build(self, hp):
        name = hp.Choice("backbone", list(self.backbones))
        constructor, to_unit_range, cuts = BACKBONES[name]
        inputs = keras.Input((self.size, self.size, 3))
        x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs) if to_unit_range else inputs
        base = constructor(include_top=False, weights=self.weights, input_shape=(self.size, self.size, 3))
        depth = hp.Int("unfreeze_depth", 0, len(cuts))
        base.trainable = depth > 0
        if depth:
            trainable = False
            for layer in base.layers:
                layer.trainable = trainable and not isinstance(layer, keras.layers.BatchNormalization)
                trainable = trainable or layer.name == cuts[depth - 1]
        x = base(x, training=False)
        x = keras.layers.GlobalAveragePooling2D()(x)
        head_depth = hp.Int("head_depth", 0, 3)
        dropout = hp.Float("dropout", 0.0, 0.5, step=0.1)
        for i in range(head_depth):
            x = keras.layers.Dense(hp.Choice(f"head_units_{i}", [64, 128, 256, 512]), activation="relu")(x)
            x = keras.layers.Dropout(dropout)(x)
        if head_depth == 0:
            x = keras.layers.Dropout(dropout)(x)
        outputs = keras.layers.Dense(self.num_classes, activation=self.activation)(x)
        model = keras.Model(inputs, outputs)
        model.compile(keras.optimizers.Adam(hp.Float("learning_rate", 1e-4, 1e-2, sampling="log")),
                      self.loss, metrics=self.metrics())
        return model


def symlink_trees(split_csv: Path, root: Path) -> list[str]:
    """``root/<split>/<label>/<file>`` symlinks for every row; returns the class names."""
    labels = set()
    with open(split_csv, newline="") as file:
        for i, row in enumerate(csv.DictReader(file)):
            folder = root / row["split"] / row["label"]
            folder.mkdir(parents=True, exist_ok=True)
            link = folder / f"{i:06d}-{Path(row['path']).name}"
            if not link.exists():
                link.symlink_to(Path(row["path"]).resolve())
            labels.add(row["label"])
    return sorted(labels)


def main(argv=None) -> dict:
    args = _arguments(argv)
    work = Path(args.work)
    names = symlink_trees(Path(args.split), work / "tree")
    load = dict(labels="inferred", label_mode="categorical", class_names=names, color_mode="rgb",
                image_size=(args.image_size, args.image_size), batch_size=args.batch_size, seed=args.seed)
    train = keras.utils.image_dataset_from_directory(work / "tree" / "train", shuffle=True, **load)
    val = keras.utils.image_dataset_from_directory(work / "tree" / "val", shuffle=False, **load)
    test = keras.utils.image_dataset_from_directory(work / "tree" / "test", shuffle=False, **load)
    train_labels = np.concatenate([np.argmax(y, 1) for _, y in train])
    class_weight = dict(enumerate(compute_class_weight("balanced", classes=np.arange(len(names)), y=train_labels)))
    keras.utils.set_random_seed(args.seed)
    weights = None if args.weights == "none" else args.weights
    hypermodel = TransferHyperModel(args.backbones.split(","), weights, args.image_size, len(names))
    tuner = keras_tuner.Hyperband(hypermodel, objective="val_loss", max_epochs=args.max_epochs,
                                  factor=args.factor, seed=args.seed, directory=str(work), project_name="tuner",
                                  overwrite=True)
    tuner.search(train, validation_data=val, epochs=args.max_epochs, class_weight=class_weight, verbose=0)
    search_seconds = time.perf_counter() - STARTED
    best = tuner.get_best_hyperparameters(1)[0]
    start = time.perf_counter()
    keras.backend.clear_session()
    keras.utils.set_random_seed(args.seed)
    model = hypermodel.build(best)
    stop = keras.callbacks.EarlyStopping("val_loss", patience=3, restore_best_weights=True)
    model.fit(train, validation_data=val, epochs=2 * args.max_epochs, class_weight=class_weight,
              callbacks=[stop], verbose=0)
    retrain_seconds = time.perf_counter() - start
    y_true = np.concatenate([np.argmax(y, 1) for _, y in test])
    probs = model.predict(test, verbose=0)
    y_pred = np.argmax(probs, 1)
    if args.heldout:  # films of the same sources no split holds: scored by the runner
        with open(args.heldout, newline="") as handle:
            rows = list(csv.DictReader(handle))
        images = np.stack([keras.utils.img_to_array(keras.utils.load_img(
            row["path"], color_mode="rgb", target_size=(args.image_size, args.image_size),
            interpolation="bilinear")) for row in rows])
        heldout = {"heldout_labels": [names.index(row["label"]) for row in rows],
                   "heldout_probabilities": model.predict(images, batch_size=args.batch_size, verbose=0).tolist()}
    else:
        heldout = {}
    result = {
        **heldout,
        "search_seconds": search_seconds, "retrain_seconds": retrain_seconds,
        "trials": sum(t.status == "COMPLETED" for t in tuner.oracle.trials.values()),
        "test_macro_f1": float(f1_score(y_true, y_pred, average="macro")),
        "covid_sensitivity": float(recall_score(y_true == names.index("COVID"), y_pred == names.index("COVID"))),
        "best_hyperparameters": best.values,
        # For the runner to score with the same bootstrap CIs as the project's evaluate.
        "class_names": names, "test_labels": y_true.tolist(), "test_probabilities": probs.tolist(),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def _arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", required=True, help="split.csv (path,label,...,split) of the run to match")
    parser.add_argument("--work", required=True, help="folder for the symlink trees and the tuner")
    parser.add_argument("--out", required=True, help="JSON file for the figures")
    parser.add_argument("--backbones", default="mobilenet_025")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--max-epochs", type=int, default=9)
    parser.add_argument("--factor", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heldout", default=None, help="CSV path,label of further films to predict (absolute paths)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
