"""TensorFlow 2.21's private names the project needs, each behind one function that says why.

Asserted by tests/hypermodels/test_compat.py.
"""

from __future__ import annotations

from tensorflow.python.framework import config as tf_config
from tensorflow.python.framework import ops as tf_ops


def gradient_registry() -> dict:
    """TensorFlow's process-wide table of gradient functions (name -> function).

    Why: every traced training step registers a ``CustomGradient-N`` entry there and
    never removes it; dropping a finished trial's entries is the only handle on that leak.
    """
    return tf_ops._gradient_registry._registry


def op_determinism_enabled() -> bool:
    """Whether op determinism is on. Why: the public API can turn it on but not ask."""
    return tf_config.is_op_determinism_enabled()


def disable_op_determinism() -> None:
    """Turns op determinism off. Why: the public API can turn it on but has no way back."""
    tf_config.disable_op_determinism()
