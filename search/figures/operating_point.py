"""A clinical operating point: one class's probability threshold for a target sensitivity or specificity.

The threshold is chosen on validation, so that it meets the target on new films
with 95% confidence, not only on validation; evaluate applies it to the test split. The
decision rule: predict the class when its probability is at least the threshold,
otherwise the most probable of the other classes. It changes only who is called
that class, so it trades the class's sensitivity against its specificity: every
record says that cost (the share of the other films it calls the class, against
argmax), and the default operating point is refused when that share is above
:data:`MAX_OTHERS_CALLED` (an explicit one is kept, with a warning).
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
from scipy import stats

from cxr_tuner.data.errors import UserError
from cxr_tuner.search.figures.metrics import CI_LEVEL

METRICS = ("sensitivity", "specificity")
DEFAULT_CLASS, DEFAULT_METRIC, DEFAULT_TARGET = "COVID", "sensitivity", 0.95
FLOAT_ROOM = 1e-6  # float32 probabilities of one film from two computations differ by ~1e-8
CONFIDENCE = 0.95  # how sure the threshold is to meet its target on new films, as the CIs
# The most of the other films (not of the class) the threshold may call the class on validation
# (out of fold under --folds): the default operating point above it is refused (argmax decides),
# an explicit --operating-point above it is kept with a warning.
MAX_OTHERS_CALLED = 0.20
_SPEC = re.compile(r"^(?P<cls>[^:]+):(?P<metric>[a-z]+)=(?P<target>[0-9.]+)$")


@dataclasses.dataclass(frozen=True)
class OperatingPoint:
    """What the threshold must achieve on validation: ``metric`` of ``class_name`` >= ``target``."""

    class_name: str
    metric: str
    target: float
    default: bool = False  # chosen by the run, not asked for with --operating-point

    def text(self) -> str:
        return f"{self.class_name}:{self.metric}={self.target:g}"


def parse(text: str | None, class_names) -> OperatingPoint | None:
    """``CLASS:sensitivity=0.95`` or ``CLASS:specificity=0.9``; None (or ``"default"``) -> the default.

    The default is COVID at sensitivity 0.95 when the run has a class named COVID, else none
    (``default`` is set on it: :func:`choose` refuses it when it costs too much specificity).
    ``"off"`` turns it off.

    Raises:
        UserError: If the text is malformed, the class unknown or the target not in (0, 1].
    """
    if text is None or text == "default":
        return OperatingPoint(DEFAULT_CLASS, DEFAULT_METRIC, DEFAULT_TARGET, default=True) \
            if DEFAULT_CLASS in class_names else None
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


def choose_threshold(is_positive: np.ndarray, scores: np.ndarray, metric: str, target: float,
                     confidence: float = CONFIDENCE) -> float:
    """The threshold on ``scores`` (``score >= t`` = positive) for ``metric >= target`` on unseen cases.

    Taking the plain validation quantile misses the target on new films about half
    the time (more than half with few cases): the true miss rate at the k-th lowest
    positive score is Beta distributed around the validation one. So the threshold
    is the k-th lowest positive score (sensitivity) with the largest k for which the
    true rate is ``>= target`` with probability ``confidence``, the Neyman-Pearson
    umbrella rule (Tong, Feng and Li 2018); the other figure is then as high as that
    allows. For specificity the same holds for the negatives, from the top. When
    validation has too few cases for that confidence even at the most extreme one,
    the threshold is that case (:func:`guarantee` says how sure it is).

    Raises:
        UserError: If validation has no case of the side the target is about.
    """
    is_positive = np.asarray(is_positive, bool)
    scores = np.asarray(scores, np.float64)
    side = scores[is_positive] if metric == "sensitivity" else scores[~is_positive]
    if not len(side):
        raise UserError(f"The validation split has no {'positive' if metric == 'sensitivity' else 'negative'} "
                        f"case to set a {metric} threshold on; use a larger collection or --operating-point off.")
    errors = max(0, allowed_errors(len(side), target, confidence))
    # The threshold sits a hair (at most FLOAT_ROOM, and never past another film's score) on the
    # safe side of the chosen case: the same calls on these films, and the exported model, which
    # recomputes a film's probability on its image in another summation order, calls it the same too.
    if metric == "sensitivity":
        chosen = np.sort(side)[errors]
        below = scores[scores < chosen]
        return float(max((chosen + below.max()) / 2 if len(below) else -np.inf, chosen - FLOAT_ROOM))
    chosen = np.sort(side)[::-1][errors]
    above = scores[scores > chosen]
    return float(min((chosen + above.min()) / 2 if len(above) else np.inf, chosen + FLOAT_ROOM))


def allowed_errors(cases: int, target: float, confidence: float = CONFIDENCE) -> int:
    """The most validation errors (of ``cases``) that still leave the true rate ``>= target`` with ``confidence``.

    -1 when even none is not enough (too few cases).
    """
    errors = int(stats.binom.ppf(1.0 - confidence, cases, 1.0 - target))
    while errors >= 0 and stats.binom.cdf(errors, cases, 1.0 - target) > 1.0 - confidence + 1e-12:
        errors -= 1
    return errors


def guarantee(cases: int, target: float, confidence: float = CONFIDENCE) -> dict:
    """How sure the threshold :func:`choose_threshold` picks is to meet ``target`` on new cases.

    ``confidence``: the probability of it (the one asked for, or less when there are too
    few cases); ``cases_needed``: how many validation cases the asked one needs at least.
    """
    errors = max(0, allowed_errors(cases, target, confidence))
    achieved = 1.0 - float(stats.binom.cdf(errors, cases, 1.0 - target)) if target < 1 else 0.0
    needed = math.ceil(math.log(1.0 - confidence) / math.log(target)) if target < 1 else None
    return {"confidence": achieved, "asked": confidence, "cases": int(cases), "errors_allowed": errors,
            "cases_needed": needed}


def guarantee_text(point: dict) -> str:
    """What the threshold of ``point`` (an ``operating_point`` record) promises on new films, in one clause."""
    g = point["guarantee"]
    side = point["class"] if point["metric"] == "sensitivity" else f"non-{point['class']}"
    sure = f"{g['confidence']:.0%} sure of {point['metric']} >= {point['target']:g} on new films"
    if g["cases_needed"] is not None and g["cases"] < g["cases_needed"]:
        return (f"{sure}: {g['asked']:.0%} needs >= {g['cases_needed']} {side} {_basis(point)} films, "
                f"there are {g['cases']}")
    return sure


def _basis(point: dict) -> str:
    """The films the threshold was chosen on: ``validation`` or ``out-of-fold`` (--folds)."""
    return point.get("chosen_on") or "validation"


def choose(point: OperatingPoint | None, class_names, y: np.ndarray, probs: np.ndarray,
           chosen_on: str = "validation") -> tuple[dict | None, dict | None]:
    """The operating point's record on the fitting films (validation, or out of fold), or why it is refused.

    The record holds the threshold, its sensitivity and specificity on those films, the
    share of the other films it calls the class (``others_called``) against argmax's
    (``others_called_argmax``), and a ``warning`` when that share is above
    :data:`MAX_OTHERS_CALLED`. The default point (``point.default``) is refused there instead.

    Returns:
        ``(record, None)`` for a point to apply, ``(None, refused)`` for a refused default
        (``refused``: the same figures, the ``reason`` and ``how_to_ask``), ``(None, None)``
        without a point.
    """
    if point is None:
        return None, None
    index = list(class_names).index(point.class_name)
    y = np.asarray(y)
    threshold = choose_threshold(y == index, probs[:, index], point.metric, point.target)
    at = figures(y, probs, index, threshold, n_bootstrap=0)
    side = (y == index) if point.metric == "sensitivity" else (y != index)
    others = y != index
    called = decide(probs, index, threshold) == index
    argmax_called = np.asarray(probs).argmax(axis=1) == index
    record = {"class": point.class_name, "metric": point.metric, "target": point.target,
              "target_text": point.text(), "threshold": threshold, "chosen_on": chosen_on,
              "default": point.default, "guarantee": guarantee(int(side.sum()), point.target),
              "validation": {"sensitivity": at["sensitivity"]["value"],
                             "specificity": at["specificity"]["value"], "n": at["n"]},
              "others_called": float(called[others].mean()) if others.any() else 0.0,
              "others_called_argmax": float(argmax_called[others].mean()) if others.any() else 0.0,
              "max_others_called": MAX_OTHERS_CALLED, "warning": None,
              "how_to_apply": how_to_apply(point.class_name, threshold)}
    if record["others_called"] <= MAX_OTHERS_CALLED:
        return record, None
    if point.default:
        flag = f"--operating-point {point.text()}"
        return None, {**{k: record[k] for k in ("class", "metric", "target", "target_text", "threshold", "chosen_on",
                                                 "validation", "others_called", "others_called_argmax",
                                                 "max_others_called")},
                      "reason": f"the default operating point would call {record['others_called']:.1%} of the other "
                                f"{chosen_on} films {point.class_name}, more than {MAX_OTHERS_CALLED:.0%}",
                      "how_to_ask": flag}
    record["warning"] = (f"it calls {record['others_called']:.1%} of the other {chosen_on} films {point.class_name}, "
                         f"more than the {MAX_OTHERS_CALLED:.0%} a default operating point may; kept because "
                         "--operating-point asked for it")
    return record, None


def cost_text(record: dict) -> str:
    """The specificity cost of an operating point record: the other films it calls the class, against argmax."""
    return (f"the threshold calls {record['others_called']:.1%} of the other {_basis(record)} films "
            f"{record['class']}, argmax {record['others_called_argmax']:.1%}")


def refused_text(refused: dict) -> str:
    """The one line saying that the default operating point was refused, why, and how to ask for it."""
    return (f"operating point: the default {refused['target_text']} is not used (the final model decides by "
            f"argmax): its threshold {refused['threshold']:.4f} would call {refused['others_called']:.1%} of the "
            f"other {_basis(refused)} films {refused['class']} (argmax {refused['others_called_argmax']:.1%}; "
            f"the default may call at most {refused['max_others_called']:.0%}); ask for it with "
            f"{refused['how_to_ask']}")


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
