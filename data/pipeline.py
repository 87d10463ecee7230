"""tf.data pipeline over decoded images: batches of (uint8 images, one-hot, sample weights).

The image array (usually the cache's memmap) is never copied into the graph: each batch
gathers its rows with NumPy, so memory stays flat however large the dataset is.

Augmentation is mild and X-ray-plausible: a small rotation, shift and zoom (one affine
warp, borders filled with black like a collimator edge) and a small brightness/contrast
change. No horizontal flip: the heart sits on the left in virtually every patient
(dextrocardia is about 1 in 10,000) and side markers are lettered, so a flipped film is
an image the model will never see in use, and it would blur where a side-specific
finding sits.
"""

import math

import numpy as np
import tensorflow as tf

MAX_ROTATION_DEGREES = 5.0
MAX_SHIFT = 0.06  # fraction of the image side
ZOOM_RANGE = (0.92, 1.08)  # > 1 zooms in
MAX_BRIGHTNESS = 0.08  # fraction of the full 0..255 range
CONTRAST_RANGE = (0.9, 1.1)


def make_dataset(
    images, labels, sample_weights, num_classes: int, batch_size: int,
    shuffle: bool = False, seed: int = 0, augment: bool = False, rows=None,
) -> tf.data.Dataset:
    """Batches of ``(images (B,S,S,1), one-hot float32 (B,K), float32 weights (B,))``.

    Multi-hot ``labels`` (a float ``(N, K)`` array, 1 / 0 / -1 masked) go through as they are.

    Args:
        images: ``(N, ...)`` array or memmap, read per batch in its own dtype: uint8
            images, or float32 backbone activations (the activation cache).
        labels: Class index per image, or a multi-hot row per image.
        sample_weights: Weight per image (e.g. its class weight), or None for ones.
        num_classes: K, the width of the one-hot labels.
        batch_size: Images per batch (the last batch may be smaller).
        shuffle: Reshuffle every epoch (seeded).
        seed: Seed for shuffling and augmentation.
        augment: Apply the mild augmentation described in the module docstring.
        rows: Optional row of ``images`` for each label, e.g. one split's indices into
            the whole cache; avoids ``images[idx]``, which copies that split into RAM.
            A ``(count, V)`` array gives each label V rows to choose from (a film and its
            re-rendered copies): every epoch each label shows one of them, drawn from ``seed``.
    """
    labels = np.asarray(labels)
    multi_hot = labels.ndim == 2
    labels = tf.constant(labels.astype(np.float32 if multi_hot else np.int32))
    count = int(labels.shape[0])
    weights = np.ones(count) if sample_weights is None else np.asarray(sample_weights)
    weights = tf.constant(weights.astype(np.float32))
    image_shape, dtype = tuple(images.shape[1:]), tf.as_dtype(images.dtype)
    if dtype == tf.float16:
        dtype = tf.float32  # a float16 activation cache is widened per batch: trials compute in float32
    rows = np.arange(count) if rows is None else np.asarray(rows, dtype=np.int64)

    def gather(i, pair):
        chosen = rows[i]
        if chosen.ndim == 2:  # one of each label's variants, drawn per batch from the seeded pair
            column = np.random.default_rng([int(v) & 0xFFFFFFFF for v in pair]).integers(chosen.shape[1], size=len(i))
            chosen = chosen[np.arange(len(i)), column]
        return np.asarray(images[chosen], dtype=dtype.as_numpy_dtype)

    def load(indices, pair):
        batch = tf.numpy_function(gather, [indices, pair], dtype, stateful=False)
        batch.set_shape((None, *image_shape))
        picked = tf.gather(labels, indices)
        one_hot = picked if multi_hot else tf.one_hot(picked, num_classes, dtype=tf.float32)
        return batch, one_hot, tf.gather(weights, indices)

    dataset = tf.data.Dataset.range(count)
    if shuffle:
        dataset = dataset.shuffle(max(count, 1), seed=seed, reshuffle_each_iteration=True)
    # A seed pair per batch, new every epoch: which variant each label shows (ignored for one row per label).
    pairs = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True).batch(2)
    dataset = tf.data.Dataset.zip(dataset.batch(batch_size), pairs).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    if augment:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip(dataset, seeds).map(
            lambda batch, pair: _augment_batch(*batch, pair), num_parallel_calls=tf.data.AUTOTUNE
        )
    return dataset.prefetch(tf.data.AUTOTUNE)


def _augment_batch(batch, one_hot, weights, seed):
    keys = tf.random.experimental.stateless_split(seed, num=5)
    count = tf.shape(batch)[0]

    def uniform(key, shape, low, high):
        return tf.random.stateless_uniform(shape, key, minval=low, maxval=high)

    angle = uniform(keys[0], [count], -1.0, 1.0) * (MAX_ROTATION_DEGREES * math.pi / 180)
    zoom = uniform(keys[1], [count], *ZOOM_RANGE)
    shift = uniform(keys[2], [count, 2], -MAX_SHIFT, MAX_SHIFT)
    pixels = _warp(tf.cast(batch, tf.float32), angle, zoom, shift)
    brightness = uniform(keys[3], [count, 1, 1, 1], -MAX_BRIGHTNESS, MAX_BRIGHTNESS) * 255.0
    contrast = uniform(keys[4], [count, 1, 1, 1], *CONTRAST_RANGE)
    mean = tf.reduce_mean(pixels, axis=[1, 2, 3], keepdims=True)
    pixels = (pixels - mean) * contrast + mean + brightness
    return tf.cast(tf.clip_by_value(tf.round(pixels), 0.0, 255.0), tf.uint8), one_hot, weights


def _warp(pixels, angle, zoom, shift):
    """Rotate by ``angle`` and zoom about the centre, then shift (fractions of the side)."""
    size = tf.cast(tf.shape(pixels)[1], tf.float32)
    centre = (size - 1.0) / 2.0
    # The transform maps output to input coordinates: input = R(angle) (out - c) / zoom + c + t.
    a0, a1 = tf.cos(angle) / zoom, -tf.sin(angle) / zoom
    b0, b1 = tf.sin(angle) / zoom, tf.cos(angle) / zoom
    a2 = centre - (a0 + a1) * centre + shift[:, 0] * size
    b2 = centre - (b0 + b1) * centre + shift[:, 1] * size
    zeros = tf.zeros_like(a0)
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=pixels, transforms=transforms, output_shape=tf.shape(pixels)[1:3],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT",
    )


class Stacked:
    """Two arrays read as one by row (the second's rows after the first's), without copying either.

    The films and their stored copies (or their activations) feed one pipeline this way.
    """

    def __init__(self, first: np.ndarray, second: np.ndarray):
        if first.shape[1:] != second.shape[1:] or first.dtype != second.dtype:
            raise ValueError(f"cannot stack {first.shape}/{first.dtype} with {second.shape}/{second.dtype}")
        self.first, self.second = first, second
        self.shape = (len(first) + len(second), *first.shape[1:])
        self.dtype = first.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows):
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        inside = rows < len(self.first)
        out[inside] = self.first[rows[inside]]
        out[~inside] = self.second[rows[~inside] - len(self.first)]
        return out
