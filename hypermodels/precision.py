"""Numeric precision of the models a run builds: Keras mixed-precision policies.

A mixed policy computes in float16 or bfloat16 and keeps the variables in float32;
the classifier's last Dense/softmax and the loss stay float32 (`XrayClassifier.head`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import keras
import tensorflow as tf

MIXED = ("mixed_float16", "mixed_bfloat16")
"""The mixed policies; with ``float32`` the concrete ones ``auto`` (:func:`resolve`) picks from."""

# Tensor cores (fast float16 matrix units) came with compute capability 7.0 (Volta).
_TENSOR_CORES = (7, 0)


@contextlib.contextmanager
def policy(name: str):
    """Layers made inside compute in ``name``'s precision; Keras' global policy is restored after.

    A layer takes the global policy when it is constructed and keeps it (its config
    saves it), so only building needs the scope.
    """
    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(before)


def resolve(precision: str) -> str:
    """``precision`` itself, or for ``auto`` the concrete policy for this machine.

    ``auto``: mixed float16 when every visible GPU has tensor cores, else float32.
    Not bfloat16 on a CPU, even one with bfloat16 units: it speeds up the one-time
    activation extraction, not the trials, and moves trial scores more than the
    float16 cache does (docs/scale.md); ``--precision mixed_bfloat16`` asks for it.
    """
    if precision != "auto":
        return precision

    gpus = tf.config.list_physical_devices("GPU")
    capabilities = [tf.config.experimental.get_device_details(gpu).get("compute_capability") for gpu in gpus]
    if gpus and all(c is not None and tuple(c) >= _TENSOR_CORES for c in capabilities):
        return "mixed_float16"
    return "float32"


def cpu_bfloat16_units(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The CPU's bfloat16 instruction sets Linux reports (``avx512_bf16``, ``amx_bf16``); [] elsewhere."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return [flag for flag in ("avx512_bf16", "amx_bf16") if flag in flags]


def policy_of(model: keras.Model) -> str:
    """The dtype policy most of ``model``'s layers with weights compute in (``float32`` without a mixed one)."""
    dtypes = [layer.dtype_policy.name for layer in _layers(model) if layer.weights]
    return max(set(dtypes), key=dtypes.count) if dtypes else "float32"


def _layers(model: keras.Model):
    for layer in model.layers:
        yield from _layers(layer) if isinstance(layer, keras.Model) else [layer]


def as_float32(model: keras.Model) -> keras.Model:
    """``model`` rebuilt with every layer in float32, holding its values (mixed variables are float32).

    ``model`` itself when it already computes in float32.
    """
    config = model.get_config()
    if not _set_float32(config):
        return model
    rebuilt = model.__class__.from_config(config)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def _set_float32(config) -> bool:
    """Replaces every mixed dtype policy in a (nested) layer config by float32; whether any was."""
    changed = False
    if isinstance(config, dict):
        for key, value in config.items():
            if key == "dtype" and isinstance(value, dict) and value.get("class_name") == "DTypePolicy" \
                    and value.get("config", {}).get("name", "float32") in MIXED:
                value["config"]["name"] = "float32"
                changed = True
            else:
                changed = _set_float32(value) or changed
    elif isinstance(config, list):
        for value in config:
            changed = _set_float32(value) or changed
    return changed
