"""K fold models as one stacked Keras model: each copy sees and is scored on its own rows only."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cxr_tuner.hypermodels import fold_stack


def test_a_copy_is_scored_on_its_fold_even_when_whole_batches_hold_none_of_its_rows():
    rng = np.random.default_rng(0)
    x = rng.random((60, 6, 6, 2), dtype=np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 60)]
    held_out = np.repeat(np.arange(3), 20)  # contiguous folds: batches 2-3 of 8 rows hold no fold-1 row
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6, 6, 2))
    features = keras.layers.BatchNormalization(trainable=False)(keras.layers.Conv2D(4, 3, strides=2)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(features)))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="categorical_crossentropy", steps_per_execution=2)
    stacked = fold_stack.stack(model, 3)

    def data(validation):
        weights = fold_stack.fold_weights(np.ones(60), held_out, 3, validation)
        return fold_stack.per_copy(tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(8), 3)

    logs = stacked.fit(data(False), validation_data=data(True), epochs=2, verbose=0).history
    for fold, copy in enumerate(fold_stack.copies(stacked)):
        own = held_out == fold
        expected = keras.losses.CategoricalCrossentropy()(y[own], copy(x[own])).numpy()
        assert logs[fold_stack.stacked_log("val_weighted_loss", fold)][-1] == pytest.approx(expected, rel=1e-5)
