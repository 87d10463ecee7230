"""The K fold models of one configuration as one Keras model: K copies side by side, trained in one pass.

``--folds K`` trains a configuration once per fold. On cached activations each fold
model's step is small, and K models cost K times the steps, the reading of the rows
and the Python between steps. Stacked, the copies share one input and one step loop:
every batch holds rows of all the folds with a weight per copy, its class weight where
the copy uses the row (training: every fold but its own; validation: its own) and 0
elsewhere. Each copy computes only the rows it has a weight for and is given a constant
elsewhere: a held-out row never reaches its copy, and the arithmetic is that of K
separate fits, not K times every row.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

STACKED = "stacked"
"""The ``fold`` a trial's data are asked for when its K fold models train stacked: every fold's
rows at once, with per-copy weights (see :func:`fold_weights`)."""
STACKED_AND_FIT = "stacked and fit"
"""As ``STACKED`` with one more copy, last, that trains on every row (the final model of
``--folds``), and no validation: a winner's retrain."""


def copy_name(fold: int) -> str:
    """The name of fold ``fold``'s (from 0) output in the stacked model: the prefix of its logs."""
    return f"fold_{fold + 1}"


def stacked_log(name: str, fold: int) -> str:
    """The key of log ``name`` (``weighted_loss``, ``val_accuracy``, ...) of copy ``fold`` in a stacked fit's logs."""
    if name.startswith("val_"):
        return f"val_{copy_name(fold)}_{name[4:]}"
    return f"{copy_name(fold)}_{name}"


class FoldAccuracy(keras.metrics.CategoricalAccuracy):
    """Plain accuracy over the rows of a copy's own fold: a positive weight counts as one, zero as none.

    The weights a copy gets are class weights times its fold mask; accuracy counts each
    of its rows once, as a fold model's ``val_accuracy`` does.
    """

    def update_state(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            sample_weight = tf.cast(sample_weight > 0, y_pred.dtype)
        return super().update_state(y_true, y_pred, sample_weight)


def _picked(weights, fold: int):
    """Copy ``fold``'s rows of a batch (positive weight), and the rows it computes: those, or the first row
    alone when it has none (an empty batch trips some TensorFlow kernels; that row's output is dropped)."""
    own = weights[:, fold] > 0
    first = tf.equal(tf.range(tf.shape(own)[0]), 0)
    return own, tf.logical_or(own, tf.logical_and(first, tf.logical_not(tf.reduce_any(own))))


class _OwnRows(keras.layers.Layer):
    """The rows of a batch that copy ``fold`` computes: those it has a weight for (see `_picked`)."""

    def __init__(self, fold: int, **kwargs):
        super().__init__(**kwargs)
        self.fold = fold

    def call(self, inputs, weights):
        return tf.boolean_mask(inputs, _picked(weights, self.fold)[1])

    def compute_output_spec(self, inputs, weights):
        return keras.KerasTensor((None, *inputs.shape[1:]), dtype=inputs.dtype)


class _AllRows(keras.layers.Layer):
    """Copy ``fold``'s probabilities put back in the batch's rows; uniform (weight 0, no gradient) elsewhere."""

    def __init__(self, fold: int, **kwargs):
        super().__init__(**kwargs)
        self.fold = fold

    def call(self, probabilities, weights):
        own, picked = _picked(weights, self.fold)
        classes = tf.shape(probabilities)[1]
        uniform = tf.fill([tf.shape(weights)[0], classes], 1.0 / tf.cast(classes, probabilities.dtype))
        placed = tf.tensor_scatter_nd_update(uniform, tf.where(picked), probabilities)
        return tf.where(tf.reduce_any(own), placed, uniform)

    def compute_output_spec(self, probabilities, weights):
        return keras.KerasTensor((None, probabilities.shape[1]), dtype=probabilities.dtype)


def stack(model: keras.Model, folds: int) -> keras.Model:
    """``folds`` copies of the compiled single-label ``model``, each starting from its weights, as one compiled model.

    Its inputs are ``model``'s and each row's weight per copy, ``(B, folds)``; each copy
    computes only the rows it has a weight for (training: about (K-1)/K of the batch,
    validation: 1/K), so the stack costs the arithmetic of K separate fits, not K times
    every row. Copy ``k`` is a model with ``model``'s layers (its weights save and load
    as ``model``'s do), its output named :func:`copy_name` (``k``); the stacked model's outputs are
    the copies' probabilities in fold order. It compiles as ``model`` did (Adam at its
    learning rate, cross-entropy, its steps per execution), per copy, with the
    class-weighted ``weighted_loss`` and the fold's ``accuracy`` as metrics.
    """
    inputs = keras.Input(model.inputs[0].shape[1:], dtype=model.inputs[0].dtype, name="inputs")
    row_weights = keras.Input((folds,), name="fold_weights")
    weights = model.get_weights()
    outputs = []
    for fold in range(folds):
        clone = keras.models.clone_model(model)
        clone.set_weights(weights)
        # A tensor, not a list of one: Keras would read each copy's loss weights one level down
        # the structure, the first row's weight standing for the whole batch.
        copy = keras.Model(clone.inputs[0], clone.outputs[0], name=f"{copy_name(fold)}_model")
        own = _OwnRows(fold, name=f"{copy_name(fold)}_rows")(inputs, row_weights)
        outputs.append(_AllRows(fold, name=copy_name(fold))(copy(own), row_weights))  # names its logs
    stacked = keras.Model([inputs, row_weights], outputs, name=f"{model.name}_x{folds}")
    stacked.compile(
        optimizer=keras.optimizers.Adam(float(np.asarray(model.optimizer.learning_rate))),
        loss=[keras.losses.CategoricalCrossentropy() for _ in range(folds)],
        weighted_metrics=[[keras.metrics.CategoricalCrossentropy(name="weighted_loss"), FoldAccuracy(name="accuracy")]
                          for _ in range(folds)],
        steps_per_execution=model.steps_per_execution,
    )
    return stacked


def copies(stacked: keras.Model) -> list[keras.Model]:
    """The fold models inside ``stacked``, in fold order."""
    return [layer for layer in stacked.layers if isinstance(layer, keras.Model)]


def fold_weights(weights: np.ndarray, held_out_fold: np.ndarray, folds: int, validation: bool,
                 fit: bool = False) -> np.ndarray:
    """Per row and copy, ``(rows, folds)``: the row's weight where copy ``k`` trains (validates) on it, else 0.

    ``held_out_fold``: the fold each row validates in. Training: every fold but its own;
    validation: its own alone. ``fit``: one more column, the weights as they are (a copy on every row).
    """
    own = np.asarray(held_out_fold)[:, None] == np.arange(folds)[None, :]
    weights = np.asarray(weights, np.float32)[:, None]
    masked = weights * (own if validation else ~own)
    return np.concatenate([masked, weights], axis=1) if fit else masked.astype(np.float32)


def per_copy(dataset: tf.data.Dataset, folds: int) -> tf.data.Dataset:
    """``(x, y, w (B, folds))`` batches as the stacked model's ``((x, w), (y,) * folds, (w[:, 0], ...))``."""
    return dataset.map(lambda x, y, w: ((x, w), (y,) * folds, tuple(w[:, k] for k in range(folds))))


class BestCopies(keras.callbacks.Callback):
    """Saves each copy's weights at its own best epoch (lowest ``val_<objective>`` of its fold), as
    KerasTuner's ``SaveBestEpoch`` does for a model: a promoted round continues each fold from there.

    Args:
        objective: The validation log a fold model ranks on (``val_weighted_loss``).
        paths: Per fold, the ``.weights.h5`` file its copy's best epoch goes to.
    """

    def __init__(self, objective: str, paths: list):
        super().__init__()
        self.objective = objective
        self.paths = [str(p) for p in paths]
        self.best = [np.inf] * len(paths)

    def on_epoch_end(self, epoch, logs=None):
        for fold, (copy, path) in enumerate(zip(copies(self.model), self.paths)):
            value = (logs or {}).get(stacked_log(self.objective, fold), np.nan)
            if value < self.best[fold]:
                self.best[fold] = value
                copy.save_weights(path)


def fold_history(history: keras.callbacks.History, fold: int) -> dict:
    """Copy ``fold``'s logs per epoch, named as a single model's fit names them, from a stacked fit's history."""
    train, val = f"{copy_name(fold)}_", f"val_{copy_name(fold)}_"
    found = {}
    for name, values in history.history.items():
        if name.startswith(train):
            found[name[len(train):]] = values
        elif name.startswith(val):
            found["val_" + name[len(val):]] = values
    return found
