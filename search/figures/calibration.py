"""Temperature scaling (Guo et al., 2017) and reliability diagrams, on arrays.

The temperature is fitted on validation probabilities only (out-of-fold ones under
``--folds``), and applied only when an out-of-sample check on those same rows says
it lowers the expected calibration error: K-fold cross-fitting, each part scaled by
the temperature fitted on the other parts (:func:`choose_temperature`). Evaluate
then reports the test split's ECE before and after it. Knows nothing of models or
files (the picture is written where it is told).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.model_selection import StratifiedGroupKFold

from cxr_tuner.search.figures.metrics import ECE_BINS, expected_calibration_error, group_codes

_LOG_T_BOUNDS = (-3.0, 3.0)  # T in [0.05, 20]: wider never helped a softmax classifier
CHECK_FOLDS = 5  # parts of the fitting rows in the out-of-sample check of the temperature


def scale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(p) / T)`` row by row, as the exported model's ``TemperatureScaling`` layer does."""
    logits = np.log(np.clip(np.asarray(probs, np.float64), 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def negative_log_likelihood(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean cross-entropy of the true classes (what temperature scaling minimises)."""
    picked = np.asarray(probs, np.float64)[np.arange(len(y_true)), y_true]
    return float(-np.log(np.clip(picked, 1e-12, 1.0)).mean())


def fit_temperature(y_val: np.ndarray, probs_val: np.ndarray) -> float:
    """The temperature that minimises the validation cross-entropy (one scalar, bounded search).

    Unweighted on purpose: calibration is about how often the model is right at a
    given confidence on cases as they come, not on class-balanced ones.
    """
    y_val = np.asarray(y_val, np.int64)
    result = minimize_scalar(lambda log_t: negative_log_likelihood(y_val, scale(probs_val, np.exp(log_t))),
                             bounds=_LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))


def check_folds(y: np.ndarray, groups=None, folds: int = CHECK_FOLDS, seed: int = 0) -> list:
    """(fit rows, held-out rows) of the temperature check: stratified by class, grouped by patient.

    scikit-learn's ``StratifiedGroupKFold`` shuffled with ``seed``: films of one patient /
    near-duplicate group (``groups``, "" or None = a film of its own) are alike, so they stay
    on one side, or the check would judge the temperature on films it was fitted on. ``folds``
    is lowered to the most groups any class has when that is smaller; [] when under 2.
    """
    y = np.asarray(y, np.int64)
    codes = group_codes(groups, len(y))
    k = min(folds, max((len(np.unique(codes[y == c])) for c in np.unique(y)), default=0))
    if k < 2:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the least populated class has only n members" is expected
        return list(StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(y, y, codes))


def cross_fitted(y: np.ndarray, probs: np.ndarray, folds: int = CHECK_FOLDS, seed: int = 0,
                 groups=None) -> dict | None:
    """ECE and cross-entropy of temperature scaling out of sample, against no temperature, on the same rows.

    Cross-fitting on :func:`check_folds`: each part is scaled by the temperature fitted on
    the other K - 1 parts, and the scaled parts are pooled. None when there are too few
    rows to check (no class in two groups).
    """
    y = np.asarray(y, np.int64)
    probs = np.asarray(probs, np.float64)
    parts = check_folds(y, groups, folds, seed)
    if not parts:
        return None
    k = len(parts)
    scaled, temperatures = np.empty_like(probs), []
    for fit_rows, held_out in parts:
        temperature = fit_temperature(y[fit_rows], probs[fit_rows])
        scaled[held_out] = scale(probs[held_out], temperature)
        temperatures.append(temperature)
    return {"method": f"stratified {k}-fold cross-fitting grouped by patient", "folds": k, "seed": int(seed), "n": int(len(y)),
            "temperatures": temperatures,
            "ece_without": expected_calibration_error(y, probs), "ece_with": expected_calibration_error(y, scaled),
            "nll_without": negative_log_likelihood(y, probs), "nll_with": negative_log_likelihood(y, scaled)}


def choose_temperature(y: np.ndarray, probs: np.ndarray, seed: int = 0, folds: int = CHECK_FOLDS,
                       groups=None) -> dict:
    """The temperature to apply to ``probs``: the one fitted on all rows, or 1 when it does not help out of sample.

    Fitted on the very rows it is judged on, a temperature always looks at least as good
    there as none, by cross-entropy, and can still raise the ECE on new films. So it is
    applied only when the :func:`cross_fitted` ECE is lower than without it.

    Returns:
        ``temperature`` (the one to apply, 1.0 when skipped), ``fitted_temperature``,
        ``applied``, ``check`` (the cross-fitted figures, None when too few rows) and
        ``reason`` (``"lowers_ece"``, ``"does_not_lower_ece"`` or ``"too_few_rows"``).
    """
    fitted = fit_temperature(y, probs)
    check = cross_fitted(y, probs, folds, seed, groups)
    if check is None:
        applied, reason = False, "too_few_rows"
    else:
        applied = check["ece_with"] < check["ece_without"]
        reason = "lowers_ece" if applied else "does_not_lower_ece"
    return {"temperature": fitted if applied else 1.0, "fitted_temperature": fitted, "applied": applied,
            "reason": reason, "check": check}


def decision_text(decision: dict, basis: str = "validation") -> str:
    """One clause saying whether the temperature was applied and why, with both cross-fitted figures.

    ``basis``: what it was fitted on, ``"validation"`` or ``"out-of-fold"``.
    """
    check = decision["check"]
    fitted = f"T = {decision['fitted_temperature']:.3f} fitted on {basis}"
    if check is None:
        return (f"not applied (T = 1): too few {basis} films to check {fitted} out of sample "
                "(no class in two patient groups)")
    figures = (f"ECE {check['ece_without']:.4f} without it, {check['ece_with']:.4f} with it; cross-entropy "
               f"{check['nll_without']:.4f} -> {check['nll_with']:.4f} ({check['folds']}-fold cross-fitting "
               f"on {basis}, seed {check['seed']})")
    if decision["applied"]:
        return f"applied ({fitted}): it lowers the out-of-sample ECE, {figures}"
    return f"not applied (T = 1): {fitted} does not lower the out-of-sample ECE, {figures}"


def summary(y_true: np.ndarray, probs: np.ndarray, temperature: float) -> dict:
    """ECE and cross-entropy before and after scaling by ``temperature``."""
    after = scale(probs, temperature)
    return {"temperature": float(temperature), "n": int(len(y_true)), "n_bins": ECE_BINS,
            "ece_before": expected_calibration_error(y_true, np.asarray(probs, np.float64)),
            "ece_after": expected_calibration_error(y_true, after),
            "nll_before": negative_log_likelihood(y_true, probs),
            "nll_after": negative_log_likelihood(y_true, after)}


def reliability(y_true: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> dict:
    """Per bin of the top probability (as the ECE bins them): count, mean confidence, accuracy."""
    probs = np.asarray(probs, np.float64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y_true)
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"counts": counts,
                "confidence": np.bincount(bins, confidence, n_bins) / counts,
                "accuracy": np.bincount(bins, correct, n_bins) / counts}
