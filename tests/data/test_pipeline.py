"""tf.data pipeline: shapes, dtypes, label/weight alignment, augmentation."""

import numpy as np

from cxr_tuner.data.pipeline import make_dataset


def _images(count, size=16):
    # Image i is filled with the value 10 * i, so a batch shows which rows it holds.
    levels = np.arange(count, dtype=np.uint8) * 10
    return np.broadcast_to(levels[:, None, None, None], (count, size, size, 1)).copy()


def test_batches_have_the_promised_shapes_dtypes_and_aligned_labels():
    images, labels = _images(10), np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    weights = np.array([0.5, 1.0, 2.0])[labels]
    seen = []
    dataset = make_dataset(images, labels, weights, 3, 4, shuffle=True, seed=1)
    for batch, one_hot, batch_weights in dataset:
        assert batch.dtype.name == "uint8" and tuple(batch.shape[1:]) == (16, 16, 1)
        assert one_hot.dtype.name == "float32" and batch_weights.dtype.name == "float32"
        rows = batch.numpy()[:, 0, 0, 0] // 10
        assert np.array_equal(one_hot.numpy().argmax(1), labels[rows])
        assert np.allclose(batch_weights.numpy(), weights[rows])
        seen.extend(rows.tolist())
    assert sorted(seen) == list(range(10)) and seen != list(range(10))  # all once, shuffled


def test_unshuffled_order_and_default_weights():
    (batch, one_hot, weights), = list(make_dataset(_images(3), [2, 0, 1], None, 3, 8))
    assert batch.numpy()[:, 0, 0, 0].tolist() == [0, 10, 20]
    assert one_hot.numpy().tolist() == [[0, 0, 1], [1, 0, 0], [0, 1, 0]]
    assert weights.numpy().tolist() == [1.0, 1.0, 1.0]


def test_augmentation_keeps_uint8_and_shape_and_changes_pixels():
    rng = np.random.default_rng(0)
    images = rng.integers(60, 200, (6, 32, 32, 1), dtype=np.uint8)
    labels = np.arange(6) % 2
    batch, one_hot, _ = next(iter(make_dataset(images, labels, None, 2, 6, augment=True, seed=0)))
    assert batch.dtype.name == "uint8" and batch.shape == (6, 32, 32, 1)
    assert not np.array_equal(batch.numpy(), images)
    assert np.array_equal(one_hot.numpy().argmax(1), labels)  # labels are not augmented


def test_rows_select_from_the_whole_array_without_copying_it():
    images = _images(6)
    (batch, one_hot, _), = list(make_dataset(images, [1, 0], None, 2, 8, rows=[4, 1]))
    assert batch.numpy()[:, 0, 0, 0].tolist() == [40, 10]
    assert one_hot.numpy().argmax(1).tolist() == [1, 0]
