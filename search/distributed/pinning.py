"""Which GPU each local worker of ``--workers N`` trains on, set in the environment it starts with.

One GPU per worker while there are enough (``CUDA_VISIBLE_DEVICES`` names one id, so
TensorFlow in that worker sees one GPU as ``GPU:0``); with more workers than GPUs they
take turns round the GPUs and each allocates GPU memory as it needs it
(``TF_FORCE_GPU_ALLOW_GROWTH``) instead of all of it, so that several fit on one GPU.
Under ``--strategy mirrored`` every worker keeps every GPU (memory growth on). Without
a GPU the environment is unchanged.
"""

from __future__ import annotations

import os
from typing import Mapping


def visible_gpus() -> list[str]:
    """The ids of the GPUs this process may use: its ``CUDA_VISIBLE_DEVICES``, else every GPU found."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [gpu.strip() for gpu in given.split(",") if gpu.strip() and gpu.strip() != "-1"]
    import tensorflow as tf

    return [str(i) for i in range(len(tf.config.list_physical_devices("GPU")))]


def worker_environment(index: int, count: int, gpus: list[str], base: Mapping[str, str],
                       strategy: str | None = None) -> dict[str, str]:
    """The environment of local worker ``index`` (0-based) of ``count`` on a machine with ``gpus``."""
    env = dict(base)
    if not gpus:
        return env
    if strategy == "mirrored":
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    else:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    if strategy == "mirrored" or count > len(gpus):
        env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
    return env


def share_gpus_with_workers() -> None:
    """Lets the chief (which extracts the activations) take GPU memory as needed, not all of it.

    Must run before TensorFlow first uses a GPU; later it cannot change and is left as is.
    """
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass
