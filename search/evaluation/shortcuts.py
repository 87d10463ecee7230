"""Shortcut evidence from the model: how much of each film's Grad-CAM energy lies inside the chest box.

The other checks are figures of the task (per source, the probe's scores:
`search.engine.task_base.Task`) and the verdict is the report's (`search.evaluation.report`).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from cxr_tuner.search.evaluation import gradcam
from cxr_tuner.search.evaluation.probe import chest_mask

_BATCH = 32


def energy_shares(explainer: keras.Model, images: np.ndarray, class_index=None,
                  maps: np.ndarray | None = None) -> np.ndarray:
    """Per image, the share of its Grad-CAM heatmap (upsampled to the image) inside `CHEST_BOX`.

    NaN for an image whose heatmap is all zero. ``class_index`` as in `gradcam.heatmaps`;
    ``maps``: those heatmaps when already computed (`gradcam.all_heatmaps`).
    """
    size = images.shape[1:3]
    mask = chest_mask(*size)
    if maps is None:
        maps = gradcam.all_heatmaps(explainer, images, class_index, _BATCH)
    shares = []
    for start in range(0, len(images), _BATCH):
        upsampled = tf.image.resize(maps[start:start + _BATCH, ..., None], size, method="bilinear").numpy()[..., 0]
        total = upsampled.sum(axis=(1, 2))
        inside = (upsampled * mask).sum(axis=(1, 2))
        shares.append(np.divide(inside, total, out=np.full_like(total, np.nan), where=total > 0))
    return np.concatenate(shares)
