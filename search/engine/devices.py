"""What a process trains on: one line naming its devices and precision, printed at start."""

from __future__ import annotations

import contextlib
import os

import tensorflow as tf

from cxr_tuner.hypermodels.compat import tf_compat



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


@contextlib.contextmanager
def deterministic_ops():
    """TensorFlow's op determinism inside (`tf.config.experimental.enable_op_determinism`), restored after.

    Every run has a seed, so a stage that trains runs in it: on a GPU, ops with a
    deterministic kernel use it and the others raise instead of varying silently
    (docs/scale.md says which parts repeat); on a CPU it costs nothing measurable.
    """
    before = tf_compat.op_determinism_enabled()
    tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if not before:
            tf_compat.disable_op_determinism()  # TensorFlow's public API has no way back

def available_cores() -> int:
    """The cores this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
