"""The report's pictures: training curves, confusion matrix, ROC curves (per class or finding), reliability.

Figures are built on `matplotlib.figure.Figure` directly (no pyplot), so nothing
touches matplotlib's global state or needs a display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import roc_auc_score, roc_curve

from cxr_tuner.search.figures.calibration import reliability
from cxr_tuner.search.figures.findings import MASKED
from cxr_tuner.search.figures.metrics import ECE_BINS, expected_calibration_error


_HISTORY_PANELS = (("Loss", "loss"), ("Accuracy", "acc"))


def plot_history(history: dict, path) -> Path:
    """Loss and accuracy per epoch, train (solid) against validation (dashed).

    Args:
        history: Keras-style ``{metric: [value per epoch]}``, e.g. ``loss``,
            ``val_loss``, ``weighted_loss``, ``accuracy``, ``val_accuracy``. Keys
            containing "loss" go to the left panel, "acc" to the right; others
            are ignored; a panel with no keys is left out. The epoch with the
            lowest validation loss (``val_weighted_loss`` if present) is marked.
        path: where to write the PNG.

    Returns:
        The path written.

    Raises:
        ValueError: if the history has neither loss nor accuracy values.
    """
    panels = [(title, _series(history, key)) for title, key in _HISTORY_PANELS]
    panels = [(title, series) for title, series in panels if series]
    if not panels:
        raise ValueError(f"history has no loss or accuracy values to plot: keys {sorted(history)}")
    best_epoch = _best_epoch(history)
    fig = Figure(figsize=(5.5 * len(panels), 4), layout="constrained")
    for ax, (title, series) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        for i, base in enumerate(sorted({name.removeprefix("val_") for name in series})):
            for name, style in ((base, "-"), (f"val_{base}", "--")):
                if name in series:
                    epochs = np.arange(1, len(series[name]) + 1)
                    ax.plot(epochs, series[name], style, color=f"C{i}", marker=".", label=name)
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch ({best_epoch})")
        ax.set(title=title, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _save(fig, path)


def plot_confusion_matrix(matrix, class_names, path) -> Path:
    """Confusion matrix: rows are true classes, colour is the share of the row.

    Each cell shows its count and its share of the true class, so a small class's
    errors are as visible as a large one's.
    """
    counts = np.asarray(matrix, dtype=float)
    row_totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, row_totals, out=np.zeros_like(counts), where=row_totals > 0)
    size = 1.2 + 1.1 * len(class_names)
    fig = Figure(figsize=(size + 1.2, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of true class")
    for (row, col), count in np.ndenumerate(counts):
        colour = "white" if shares[row, col] > 0.5 else "black"
        ax.text(col, row, f"{int(count)}\n{shares[row, col]:.0%}", ha="center", va="center", color=colour)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=30, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set(xlabel="predicted class", ylabel="true class", title="Confusion matrix")
    return _save(fig, path)


def plot_roc(curves: dict, aucs: dict, path) -> Path:
    """One-vs-rest ROC curves, one line per class, with the chance diagonal.

    Args:
        curves: ``{class name: (fpr, tpr)}`` as from `search.figures.metrics.roc_curves`.
        aucs: ``{class name: AUC or None}`` for the legend.
        path: where to write the PNG.
    """
    fig = Figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.subplots()
    for name, (fpr, tpr) in curves.items():
        auc = aucs.get(name)
        ax.plot(fpr, tpr, label=name if auc is None else f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate (1 - specificity)",
           ylabel="true positive rate (sensitivity)", title="ROC, one class vs the rest")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def _series(history, key):
    return {name: list(values) for name, values in history.items() if key in name and len(values)}


def _best_epoch(history):
    for name in ("val_weighted_loss", "val_loss"):
        if history.get(name):
            return int(np.nanargmin(history[name])) + 1
    return None


def _save(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def plot_reliability(y_true: np.ndarray, before: np.ndarray, after: np.ndarray | None, path) -> Path:
    """Reliability diagram: accuracy against confidence per bin, before and after scaling.

    ``after`` None: no temperature was applied, one curve.
    """
    figure = Figure(figsize=(5, 5), layout="constrained")
    ax = figure.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly calibrated")
    curves = ((before, "before", "o"), (after, "after temperature scaling", "s")) if after is not None else \
        ((before, "no temperature applied", "o"),)
    for probs, label, marker in curves:
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


def plot_finding_roc(y: np.ndarray, probs: np.ndarray, names: Sequence[str], path) -> Path:
    """One ROC curve per label on its unmasked films (AUC in the legend), with the chance diagonal.

    A label without both a positive and a negative film has no curve; the legend says so.
    """
    y, probs = np.asarray(y, np.float64), np.asarray(probs, np.float64)
    fig = Figure(figsize=(6.5, 6), layout="constrained")
    ax = fig.subplots()
    without = []
    for j, name in enumerate(names):
        rows = y[:, j] != MASKED
        is_pos = y[rows, j] == 1
        if not is_pos.any() or is_pos.all():
            without.append(name)
            continue
        fpr, tpr, _ = roc_curve(is_pos, probs[rows, j])
        auc = roc_auc_score(is_pos, probs[rows, j])
        ax.plot(fpr, tpr, color=_colour(j), linestyle="-" if j < 10 else "--",
                label=f"{name} (AUC {auc:.3f}, {int(is_pos.sum())} pos.)")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    if without:
        ax.plot([], [], " ", label=f"no curve (one kind of film): {', '.join(without)}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate (1 - specificity)",
           ylabel="true positive rate (sensitivity)", title="ROC per finding (masked films left out)")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="x-small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _colour(j):
    """tab20's dark shades for the first ten labels, its light ones after (14 findings need more than 10)."""
    return colormaps["tab20"]((2 * j + j // 10) % 20)
