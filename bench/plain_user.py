"""The plain KerasTuner user of the tutorials' recipe, for the acquisition-shift bench.

``image_dataset_from_directory`` with its own 80/20 split by file of the folder it is given,
RGB at 224 px, MobileNet 0.25 with ImageNet weights and its top 0, 4, 8 or 12 layers
unfrozen, 1-3 dense layers of 64/128/256 units, one dropout 0-0.5, Adam 1e-4 to 1e-2 (log),
balanced class weights, ``Hyperband(objective="val_loss", max_epochs=9, factor=3)`` with
``EarlyStopping(patience=2)``, then the best retrained with ``EarlyStopping(patience=3,
restore_best_weights=True)``. It predicts every film of ``--heldout`` (path,label CSV) and
writes the labels, probabilities and its wall times as JSON.

Deliberately imports nothing from this project.

    python bench/plain_user.py --train DIR --heldout films.csv --work DIR --out result.json
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # the job's wall time counts imports, as a user's script's does

import argparse
import csv
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import keras_tuner
import numpy as np
from sklearn.utils.class_weight import compute_class_weight


class PlainUser(keras_tuner.HyperModel):
    def __init__(self, size: int, num_classes: int, weights: str | None):
        super().__init__()
        self.size, self.num_classes, self.weights = size, num_classes, weights

    def build(self, hp):
        inputs = keras.Input((self.size, self.size, 3))
        x = keras.applications.mobilenet.preprocess_input(inputs)
        base = keras.applications.MobileNet(alpha=0.25, include_top=False, weights=self.weights,
                                            input_shape=(self.size, self.size, 3))
        unfreeze = hp.Int("unfreeze_depth", 0, 12, step=4)
        base.trainable = unfreeze > 0
        for layer in base.layers[:len(base.layers) - unfreeze]:
            layer.trainable = False
        x = base(x, training=False)
        x = keras.layers.GlobalAveragePooling2D()(x)
        dropout = hp.Float("dropout", 0.0, 0.5, step=0.1)
        for i in range(hp.Int("dense_layers", 1, 3)):
            x = keras.layers.Dense(hp.Choice(f"units_{i}", [64, 128, 256]), activation="relu")(x)
        x = keras.layers.Dropout(dropout)(x)
        outputs = keras.layers.Dense(self.num_classes, activation="softmax")(x)
        model = keras.Model(inputs, outputs)
        model.compile(keras.optimizers.Adam(hp.Float("learning_rate", 1e-4, 1e-2, sampling="log")),
                      "categorical_crossentropy", metrics=["accuracy"])
        return model


def main(argv=None) -> dict:
    args = _arguments(argv)
    work = Path(args.work)
    train, val = keras.utils.image_dataset_from_directory(
        args.train, validation_split=0.2, subset="both", seed=args.seed, label_mode="categorical",
        color_mode="rgb", image_size=(args.image_size, args.image_size), batch_size=32)
    names = train.class_names
    labels = np.concatenate([np.argmax(y, 1) for _, y in train])
    class_weight = dict(enumerate(compute_class_weight("balanced", classes=np.arange(len(names)), y=labels)))
    keras.utils.set_random_seed(args.seed)
    hypermodel = PlainUser(args.image_size, len(names), None if args.weights == "none" else args.weights)
    tuner = keras_tuner.Hyperband(hypermodel, objective="val_loss", max_epochs=args.max_epochs, factor=3,
                                  seed=args.seed, directory=str(work), project_name="plain_user", overwrite=True)
    tuner.search(train, validation_data=val, class_weight=class_weight, verbose=0,
                 callbacks=[keras.callbacks.EarlyStopping("val_loss", patience=2)])
    search_seconds = time.perf_counter() - STARTED
    best = tuner.get_best_hyperparameters(1)[0]
    keras.backend.clear_session()
    keras.utils.set_random_seed(args.seed)
    model = hypermodel.build(best)
    model.fit(train, validation_data=val, epochs=2 * args.max_epochs, class_weight=class_weight, verbose=0,
              callbacks=[keras.callbacks.EarlyStopping("val_loss", patience=3, restore_best_weights=True)])
    job_seconds = time.perf_counter() - STARTED
    with open(args.heldout, newline="") as handle:
        rows = list(csv.DictReader(handle))
    probabilities = []
    for start in range(0, len(rows), 256):
        images = np.stack([keras.utils.img_to_array(keras.utils.load_img(
            row["path"], color_mode="rgb", target_size=(args.image_size, args.image_size), interpolation="bilinear"))
            for row in rows[start:start + 256]])
        probabilities.append(model.predict(images, batch_size=32, verbose=0))
    result = {"class_names": names, "labels": [names.index(row["label"]) for row in rows],
              "probabilities": np.concatenate(probabilities).tolist(), "search_seconds": search_seconds,
              "job_seconds": job_seconds, "best_hyperparameters": best.values,
              "trials": sum(t.status == "COMPLETED" for t in tuner.oracle.trials.values())}
    Path(args.out).write_text(json.dumps(result) + "\n")
    return result


def _arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True, help="a folder per class: what the user trains and validates on")
    parser.add_argument("--heldout", required=True, help="CSV path,label of the films to predict")
    parser.add_argument("--work", required=True, help="folder for the tuner")
    parser.add_argument("--out", required=True, help="JSON file for the figures")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--max-epochs", type=int, default=9)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
