"""Chest-hidden probe: how much of the label can be read outside the lungs?

``CHEST_BOX`` is the one definition of the chest region, as fractions of the image
(top, bottom, left, right): rows 10-88 %, columns 10-90 %. On a frontal film that
covers both lung fields from the apices to the costophrenic angles with the heart
and mediastinum between them; what it leaves out is the frame where text markers,
collimator borders, shoulders and the neck are (the shortcuts of DeGrave et al. 2021).

Hiding fills the box with the mean of the pixels left visible; keeping fills the
outside with the mean of the box. (The whole image's mean would leak a little of the
hidden part, e.g. a bright lesion, into the fill.)

Three scores, each with a bootstrap 95% CI beside chance (always guessing the most
common class of the scored set):

- ``winner_chest_hidden``: the model on test images with the chest hidden;
- ``winner_chest_only``: the model on test images with only the chest kept;
- ``fresh_head_chest_hidden``: a new logistic-regression head trained on the model's
  features (the input of its last layer) of chest-hidden *training* images (at most
  ``PROBE_TRAIN_IMAGES``, stratified: a linear head on a few hundred features per class
  is as good as on thousands, and each image is a forward pass), scored on
  chest-hidden test images. Far above chance means the images carry their label
  outside the lungs, whatever the model was trained to look at.
"""

from __future__ import annotations

import keras
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cxr_tuner.search.evaluation.metrics import classification_metrics

CHEST_BOX = (0.10, 0.88, 0.10, 0.90)  # top, bottom, left, right as fractions of the image
_BATCH = 32
PROBE_TRAIN_IMAGES = 600


def chest_mask(height: int, width: int | None = None) -> np.ndarray:
    """Bool (height, width) mask, True inside `CHEST_BOX`."""
    width = width or height
    top, bottom, left, right = CHEST_BOX
    mask = np.zeros((height, width), dtype=bool)
    mask[round(top * height):round(bottom * height), round(left * width):round(right * width)] = True
    return mask


def chest_area() -> float:
    """Share of the image inside the box: the chest share of a heatmap spread evenly."""
    top, bottom, left, right = CHEST_BOX
    return (bottom - top) * (right - left)


def hide_chest(images: np.ndarray) -> np.ndarray:
    """Copies of ``images`` (N, H, W[, C]) with the chest box filled with the mean outside it."""
    return _fill(images, chest_mask(images.shape[1], images.shape[2]))


def keep_chest(images: np.ndarray) -> np.ndarray:
    """Copies of ``images`` with everything outside the chest box filled with the box's mean."""
    return _fill(images, ~chest_mask(images.shape[1], images.shape[2]))


def _fill(images: np.ndarray, hidden: np.ndarray) -> np.ndarray:
    out = np.array(images, copy=True)
    for image in out:
        image[hidden] = np.round(image[~hidden].mean(axis=0)).astype(image.dtype)
    return out


def chest_hidden_probe(model: keras.Model, train_images, train_labels, test_images, test_labels,
                       class_names, seed: int = 0, groups=None) -> dict:
    """The three scores of the module docstring: {name: figures}, plus ``chance`` and ``chest_box``.

    ``groups``: the test films' patient / near-duplicate groups, which the intervals resample.

    Each figure is ``{"accuracy": {"value", "ci95"}, "macro_f1": {...}, "chance": float, "n": int}``.
    """
    test_labels = np.asarray(test_labels)
    rows = _probe_rows(np.asarray(train_labels), seed)
    # One pass (one traced predict) over every altered image gives the winner's output and its features.
    both = keras.Model(model.inputs, [model.output, model.layers[-1].input])
    n = len(test_images)
    probs, features = _predict(both, np.concatenate([hide_chest(test_images), keep_chest(test_images),
                                                     hide_chest(np.asarray(train_images[rows]))]))
    hidden_features = features[:n]
    result = {
        "winner_chest_hidden": _scored(test_labels, probs[:n], class_names, seed, groups),
        "winner_chest_only": _scored(test_labels, probs[n:2 * n], class_names, seed, groups),
    }
    head = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
    head.fit(features[2 * n:], np.asarray(train_labels)[rows])
    probs = np.zeros((len(test_labels), len(class_names)))
    probs[:, head.classes_] = head.predict_proba(hidden_features)
    result["fresh_head_chest_hidden"] = _scored(test_labels, probs, class_names, seed, groups)
    result["chest_box"] = dict(zip(("top", "bottom", "left", "right"), CHEST_BOX))
    return result


def _probe_rows(labels: np.ndarray, seed: int) -> np.ndarray:
    """The training rows the fresh head learns from: all, or ``PROBE_TRAIN_IMAGES`` stratified by class."""
    rows = np.arange(len(labels))
    if len(rows) <= PROBE_TRAIN_IMAGES:
        return rows
    kept, _ = train_test_split(rows, train_size=PROBE_TRAIN_IMAGES, stratify=labels, random_state=seed)
    return np.sort(kept)


def _predict(model, images):
    """The model's output(s) as float64 arrays (a list for a model of several outputs)."""
    outputs = model.predict(np.asarray(images), batch_size=_BATCH, verbose=0)
    if isinstance(outputs, (list, tuple)):
        return [np.asarray(o, dtype=np.float64) for o in outputs]
    return np.asarray(outputs, dtype=np.float64)


def _scored(labels, probs, class_names, seed, groups) -> dict:
    metrics = classification_metrics(labels, probs, class_names, seed=seed, groups=groups)
    chance = float(np.bincount(labels, minlength=len(class_names)).max() / len(labels))
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "chance": chance,
            "n": metrics["n"]}
