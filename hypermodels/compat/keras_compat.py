"""Keras 3.15's private names the project needs, each behind one function that says why.

Keras has no public walk over a functional graph's nodes, no public way to call a
graph with fresh copies of its layers, and no public answer to "which input sizes does
this application accept" or "which weight file would it fetch". Everything here is
asserted by tests/hypermodels/test_compat.py.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from typing import Callable

from keras.src.applications import imagenet_utils
from keras.src.models.functional import Functional
from keras.src.utils import file_utils
from keras.src.utils.naming import to_snake_case


def auto_name(class_name: str) -> str:
    """The prefix Keras names an unnamed layer of ``class_name`` with (``Conv2D`` -> ``conv2d``).

    Why: a Keras-named layer's name depends on what the process built before, so
    discovery must recognise such names; Keras' own rule is not public.
    """
    return to_snake_case(class_name)


def call_inputs(operation) -> list:
    """The input tensors of ``operation``'s first call (its node in the graph it belongs to); [] if never called.

    Why: a functional graph's edges (which layer reads which) are only in the private ``_inbound_nodes``.
    """
    nodes = operation._inbound_nodes
    return list(nodes[0].input_tensors) if nodes else []


def call_outputs(operation) -> list:
    """The output tensors of ``operation``'s first call; [] if never called (why: as :func:`call_inputs`)."""
    nodes = operation._inbound_nodes
    return list(nodes[0].output_tensors) if nodes else []


def producer(tensor):
    """The operation (layer or Keras op) whose call made symbolic ``tensor``.

    Why: the graph's reverse edge; ``KerasTensor._keras_history`` is its only record.
    """
    return tensor._keras_history.operation


def run_through_graph(model, inputs, operation_fn: Callable, call_fn: Callable | None = None):
    """``model``'s graph called on ``inputs`` with ``operation_fn(op)`` standing in for each operation.

    Why: rebuilding a backbone flat on the caller's input tensor with fresh copies of
    its layers (what ``clone_model`` does inside, without its re-cloning onto a new Input)
    is only possible through ``Functional._run_through_graph``; ``call_fn(op, *args, **kwargs)``
    (default: calling it) lets a caller add a layer after an operation.
    """
    if call_fn is None:
        return model._run_through_graph(inputs, operation_fn=operation_fn)
    return model._run_through_graph(inputs, operation_fn=operation_fn, call_fn=call_fn)


def is_functional(model) -> bool:
    """Whether ``model`` is a functional graph (not a subclassed model, whose layers have no graph to cut).

    Why: ``keras.Model(inputs, outputs)`` returns the private class ``Functional``; no public predicate exists.
    """
    return isinstance(model, Functional)


class _Asked(Exception):
    """Raised by a recorder to stop a dry construction once it has told what was needed."""


_ASKER = contextvars.ContextVar("cxr_tuner_keras_asker", default=None)
_SWAPPING = threading.Lock()


@contextlib.contextmanager
def asking(module, attribute: str, record: Callable):
    """Inside, calls of ``module.attribute`` made by this thread (this context) go to ``record``.

    Calls from every other thread still reach the original function, and it is back
    in place on exit; one swap at a time. Why: the only way to learn what a Keras
    application passes to its private input-shape check or to ``get_file`` is to be
    called in their place while it is being constructed.
    """
    with _SWAPPING:
        original, token = getattr(module, attribute), object()

        def routed(*args, **kwargs):
            return (record if _ASKER.get() is token else original)(*args, **kwargs)

        reset = _ASKER.set(token)
        setattr(module, attribute, routed)
        try:
            yield
        finally:
            setattr(module, attribute, original)
            _ASKER.reset(reset)


def _dry(module, attribute: str, record: Callable, call: Callable) -> bool:
    """Calls ``call()`` while ``record`` (which raises ``_Asked``) answers for ``module.attribute``; True if it did."""
    with asking(module, attribute, record):
        try:
            call()
        except _Asked:
            return True
    return False


def input_size_bounds(application: Callable) -> tuple[int, int] | None:
    """``(default_size, min_size)`` the application passes to Keras' private ``obtain_input_shape``; None if it does not.

    Why: the smallest input an application accepts and the size its ImageNet weights
    were trained at are arguments of that private check, stated nowhere public.
    """
    seen = {}

    def record(input_shape, default_size, min_size, *args, **kwargs):
        seen.update(default_size=default_size, min_size=min_size)
        raise _Asked

    if not _dry(imagenet_utils, "obtain_input_shape", record, lambda: application(include_top=False, weights=None)):
        return None
    return seen["default_size"], seen["min_size"]


def fetched_file_name(build: Callable) -> str | None:
    """The file name ``build()`` (an application with ``weights="imagenet"``) would fetch with ``get_file``; None if none.

    Why: which no-top weight file an application loads for an input size is decided
    inside it (per family, per size); asking ``file_utils.get_file`` is the one way
    that holds for every application. Errors of ``build`` (a size without weights) pass.
    """
    asked = []

    def record(fname=None, *args, **kwargs):
        asked.append(fname)
        raise _Asked

    return asked[0] if _dry(file_utils, "get_file", record, build) else None
