"""A clinical operating point: one class's probability threshold for a target sensitivity or specificity.

The threshold is chosen on validation; evaluate applies it to the test split. The
decision rule: predict the class when its probability is at least the threshold,
otherwise the most probable of the other classes. It changes only who is called
that class, so it trades the class's sensitivity against its specificity.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

from data.errors import UserError
from search.evaluation.metrics import CI_LEVEL

METRICS = ("sensitivity", "specificity")
DEFAULT_CLASS, DEFAULT_METRIC, DEFAULT_TARGET = "COVID", "sensitivity", 0.95
_SPEC = re.compile(r"^(?P<cls>[^:]+):(?P<metric>[a-z]+)=(?P<target>[0-9.]+)$")


@dataclasses.dataclass(frozen=True)
class OperatingPoint:
    """What the threshold must achieve on validation: ``metric`` of ``class_name`` >= ``target``."""

    class_name: str
    metric: str
    target: float

    def text(self) -> str:
        return f"{self.class_name}:{self.metric}={self.target:g}"


def parse(text: str | None, class_names) -> OperatingPoint | None:
    """``CLASS:sensitivity=0.95`` or ``CLASS:specificity=0.9``; None (or ``"default"``) -> the default.

    The default is COVID at sensitivity 0.95 when the run has a class named COVID, else none.
    ``"off"`` turns it off.

    Raises:
        UserError: If the text is malformed, the class unknown or the target not in (0, 1].
    """
    if text is None or text == "default":
        return OperatingPoint(DEFAULT_CLASS, DEFAULT_METRIC, DEFAULT_TARGET) if DEFAULT_CLASS in class_names else None
    if text == "off":
        return None
    match = _SPEC.match(text.strip())
    if not match or match["metric"] not in METRICS:
        raise UserError(f"--operating-point {text!r} is not CLASS:sensitivity=X or CLASS:specificity=X "
                        "(e.g. COVID:sensitivity=0.95), or 'off'.")
    point = OperatingPoint(match["cls"], match["metric"], float(match["target"]))
    if point.class_name not in class_names:
        raise UserError(f"--operating-point names class {point.class_name!r}; the run's classes are "
                        f"{', '.join(class_names)}.")
    if not 0.0 < point.target <= 1.0:
        raise UserError(f"--operating-point target {point.target:g} must be in (0, 1], e.g. 0.95.")
    return point


def choose_threshold(is_positive: np.ndarray, scores: np.ndarray, metric: str, target: float) -> float:
    """The threshold on ``scores`` (``score >= t`` = positive) meeting ``metric >= target`` with the best other figure.

    For sensitivity: the highest threshold that still calls at least ``ceil(target * P)``
    of the P positives positive (so specificity is as high as it can be). For
    specificity: the lowest threshold that keeps at least ``ceil(target * N)`` of the
    N negatives below it.

    Raises:
        UserError: If validation has no case of the side the target is about.
    """
    is_positive = np.asarray(is_positive, bool)
    scores = np.asarray(scores, np.float64)
    side = scores[is_positive] if metric == "sensitivity" else scores[~is_positive]
    if not len(side):
        raise UserError(f"The validation split has no {'positive' if metric == 'sensitivity' else 'negative'} "
                        f"case to set a {metric} threshold on; use a larger collection or --operating-point off.")
    needed = max(1, math.ceil(target * len(side) - 1e-9))
    if metric == "sensitivity":
        return float(np.sort(side)[::-1][needed - 1])
    return float(np.nextafter(np.sort(side)[needed - 1], np.inf))


def decide(probs: np.ndarray, class_index: int, threshold: float) -> np.ndarray:
    """Predicted classes: ``class_index`` where its probability >= threshold, else the best other class."""
    probs = np.asarray(probs, np.float64)
    others = probs.copy()
    others[:, class_index] = -np.inf
    return np.where(probs[:, class_index] >= threshold, class_index, others.argmax(axis=1))


def figures(y_true: np.ndarray, probs: np.ndarray, class_index: int, threshold: float,
            n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """Sensitivity and specificity of ``class_index`` at ``threshold``, each with a 95% bootstrap CI."""
    is_positive = np.asarray(y_true) == class_index
    called = decide(probs, class_index, threshold) == class_index
    rng = np.random.default_rng(seed)
    n = len(is_positive)
    draws = rng.integers(0, n, size=(n_bootstrap, n))
    weights = np.stack([np.bincount(row, minlength=n) for row in draws]).astype(np.float64) if n_bootstrap else None
    out = {"threshold": float(threshold), "n": int(n)}
    for name, cases, hit in (("sensitivity", is_positive, called), ("specificity", ~is_positive, ~called)):
        value = float((hit & cases).sum() / cases.sum()) if cases.any() else None
        ci = None
        if value is not None and weights is not None:
            with np.errstate(invalid="ignore", divide="ignore"):
                samples = (weights @ (hit & cases)) / (weights @ cases)
            lo, hi = np.nanpercentile(samples, [(100 - CI_LEVEL) / 2, (100 + CI_LEVEL) / 2])
            ci = [float(lo), float(hi)]
        out[name] = {"value": value, "ci95": ci}
    return out


def how_to_apply(class_name: str, threshold: float) -> str:
    """The one-line rule a user of the exported model follows."""
    return (f"call an image {class_name} when the model's {class_name} probability is >= {threshold:.6g}; "
            "otherwise take the most probable of the other classes")
