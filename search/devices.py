"""What a process trains on: one line naming its devices and precision, printed at start."""

from __future__ import annotations

import tensorflow as tf

from search.distributed.local import available_cores


def devices_line(precision: str = "float32") -> str:
    """E.g. ``devices: CPU, 2 threads (no GPU visible); precision float32``.

    GPUs are named by TensorFlow's device details (e.g. ``NVIDIA A100-SXM4-40GB``); a
    TensorFlow built without CUDA, or without the CUDA libraries of the ``gpu`` extra,
    sees none, which the line says so a user expecting a GPU notices at once.
    """
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name) for gpu in gpus]
        where = f"{len(gpus)} GPU{'s' * (len(gpus) > 1)} ({', '.join(names)})"
    else:
        threads = tf.config.threading.get_intra_op_parallelism_threads() or available_cores()
        cuda = "" if tf.test.is_built_with_cuda() else "; this TensorFlow is built without CUDA"
        where = f"CPU, {threads} thread{'s' * (threads > 1)} (no GPU visible{cuda})"
    return f"devices: {where}; precision {precision}"
