"""Temperature scaling (Guo et al., 2017) and reliability diagrams, on arrays.

The temperature is fitted on validation probabilities only; evaluate then reports
the expected calibration error on the test split before and after it. Knows
nothing of models or files (the picture is written where it is told).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from scipy.optimize import minimize_scalar

from search.evaluation.metrics import ECE_BINS, expected_calibration_error

_LOG_T_BOUNDS = (-3.0, 3.0)  # T in [0.05, 20]: wider never helped a softmax classifier


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


def plot_reliability(y_true: np.ndarray, before: np.ndarray, after: np.ndarray, path) -> Path:
    """Reliability diagram: accuracy against confidence per bin, before and after scaling."""
    figure = Figure(figsize=(5, 5), layout="constrained")
    ax = figure.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly calibrated")
    for probs, label, marker in ((before, "before", "o"), (after, "after temperature scaling", "s")):
        bins = reliability(y_true, probs)
        used = bins["counts"] > 0
        ece = expected_calibration_error(np.asarray(y_true), np.asarray(probs, np.float64))
        ax.plot(bins["confidence"][used], bins["accuracy"][used], marker=marker, label=f"{label} (ECE {ece:.3f})")
    ax.set(xlabel="mean top probability in bin", ylabel="accuracy in bin", xlim=(0, 1.02), ylim=(0, 1.02),
           title=f"Reliability ({len(y_true)} cases, {ECE_BINS} bins)")
    ax.legend(loc="upper left", fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path
