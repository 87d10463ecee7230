"""Test-set figures from predicted probabilities: what `evaluate` writes to metrics.json.

Everything here works on arrays (integer labels, an (N, K) probability matrix) and
knows nothing of models or files. Point estimates come from scikit-learn; the
bootstrap re-computes the same quantities for 1000 resamples at once from
per-resample sample weights, which is what keeps it fast. It draws patient /
near-duplicate groups, not films: films of one patient are alike, so drawing them
one by one makes an interval too narrow (the multi-label figures use the same draw).
"""

from typing import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
    recall_score,
    roc_auc_score,
    roc_curve,
)


ECE_BINS = 15
CI_LEVEL = 95


def classification_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    positive_class: str = "COVID",
    n_bootstrap: int = 1000,
    seed: int = 0,
    groups: Sequence[str] | None = None,
) -> dict:
    """Headline, per-class and calibration figures with bootstrap confidence intervals.

    The predicted class is ``argmax(probs, axis=1)``. Every sklearn call gets
    ``labels=range(K)`` so a class missing from ``y_true`` never shifts indices.

    Returned dict (JSON-serialisable; ``None`` where a figure is undefined)::

        n, class_names, positive_class, n_bootstrap, n_groups, ci_method
        accuracy, macro_f1, covid_sensitivity, covid_specificity:
            {"value": float | None, "ci95": [lo, hi] | None}   (+ "reason" when None)
        roc_auc: {"per_class": {name: float | None},
                  "undefined": {name: reason},          # classes whose AUC is None
                  "macro": {"value": ..., "ci95": ...}}  # mean over defined classes
        per_class: {name: {precision, recall, f1, support, tp, fp, tn, fn}}
        confusion_matrix: {"class_names": [...], "matrix": [[int]]}  # rows = true
        ece: {"value": float, "n_bins": 15}

    ``macro_f1`` averages over the classes present in ``y_true`` (a class absent
    from an external set has no defined F1; predictions into it still lower the
    recall of the true class). ``per_class`` covers all classes, with tp/fp/tn/fn
    counted one-vs-rest. ``covid_*`` treat ``positive_class`` against all other
    classes. ``ci95`` is the 2.5th-97.5th percentile of the figure over
    ``n_bootstrap`` resamples of the groups with replacement, each drawn group
    bringing all its films (resamples where a figure is undefined are skipped);
    ``ci_method`` says whether groups or single films were drawn. ``ece`` is the expected calibration
    error: cases are put in 15 equal-width bins of their top probability
    ``((m-1)/15, m/15]``; ECE is the case-weighted mean of
    ``|accuracy - mean top probability|`` over bins (0 = calibrated).

    Args:
        y_true: (N,) integer class indices into ``class_names``.
        probs: (N, K) predicted class probabilities.
        class_names: the K class names, in column order of ``probs``.
        positive_class: the class for sensitivity/specificity.
        n_bootstrap: number of bootstrap resamples (0 disables the CIs).
        seed: seed of the bootstrap's random generator.
        groups: (N,) patient / near-duplicate group per case ("" = a group of its own);
            None = every case its own group.

    Raises:
        ValueError: if the shapes or labels do not fit together.
    """
    y_true, probs = _validated(y_true, probs, class_names)
    codes = group_codes(groups, len(y_true))
    k = len(class_names)
    y_pred = probs.argmax(axis=1)
    present = np.unique(y_true)
    positive = list(class_names).index(positive_class) if positive_class in class_names else None

    point = {
        "accuracy": accuracy_score(y_true, y_pred),
        "macro_f1": f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0),
        **_sensitivity_specificity(y_true, y_pred, positive),
    }
    aucs, undefined = _roc_aucs(y_true, probs, class_names)
    defined = [i for i, name in enumerate(class_names) if aucs[name] is not None]
    point["roc_auc"] = float(np.mean([aucs[class_names[i]] for i in defined])) if defined else None

    boot = _bootstrap(y_true, probs, y_pred, defined, positive, bootstrap_weights(codes, n_bootstrap, seed))
    headline = {name: _with_ci(point[name], boot.get(name)) for name in point}
    for name, why in _undefined_reasons(positive_class, positive, y_true, point).items():
        headline[name]["reason"] = why

    return {
        "n": int(len(y_true)),
        "class_names": list(class_names),
        "positive_class": positive_class,
        "n_bootstrap": int(n_bootstrap),
        "n_groups": int(codes.max()) + 1,
        "ci_method": ci_method(codes),
        "accuracy": headline["accuracy"],
        "macro_f1": headline["macro_f1"],
        "roc_auc": {"per_class": aucs, "undefined": undefined, "macro": headline["roc_auc"]},
        "covid_sensitivity": headline["sensitivity"],
        "covid_specificity": headline["specificity"],
        "per_class": _per_class(y_true, y_pred, class_names),
        "confusion_matrix": {
            "class_names": list(class_names),
            "matrix": confusion_matrix(y_true, y_pred, labels=range(k)).tolist(),
        },
        "ece": {"value": expected_calibration_error(y_true, probs), "n_bins": ECE_BINS},
    }


def roc_curves(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> dict:
    """One-vs-rest ROC curve per class, for plotting.

    Returns:
        {class name: (fpr, tpr)} as numpy arrays. Classes whose curve is undefined
        (absent from ``y_true``, or every case belongs to them) are left out.
    """
    y_true, probs = _validated(y_true, probs, class_names)
    curves = {}
    for i, name in enumerate(class_names):
        is_class = y_true == i
        if 0 < is_class.sum() < len(is_class):
            fpr, tpr, _ = roc_curve(is_class, probs[:, i])
            curves[name] = (fpr, tpr)
    return curves


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE over equal-width bins of the top probability (see `classification_metrics`)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    gap = np.abs(np.bincount(bins, correct, n_bins) - np.bincount(bins, confidence, n_bins))
    # Sum over bins of |B|/N * |acc(B) - conf(B)| == sum |sum correct - sum conf| / N.
    return float(gap.sum() / counts.sum())


def _validated(y_true, probs, class_names):
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(class_names):
        raise ValueError(f"probs must have shape (N, {len(class_names)}), got {probs.shape}")
    if y_true.shape != (probs.shape[0],) or len(y_true) == 0:
        raise ValueError(f"y_true must have shape ({probs.shape[0]},) with N > 0, got {y_true.shape}")
    if not np.issubdtype(y_true.dtype, np.integer) or y_true.min() < 0 or y_true.max() >= len(class_names):
        raise ValueError(f"y_true must hold integer class indices in [0, {len(class_names)})")
    return y_true.astype(np.int64), probs


def _sensitivity_specificity(y_true, y_pred, positive):
    if positive is None:
        return {"sensitivity": None, "specificity": None}
    is_pos, pred_pos = y_true == positive, y_pred == positive
    return {
        "sensitivity": recall_score(is_pos, pred_pos) if is_pos.any() else None,
        "specificity": recall_score(~is_pos, ~pred_pos) if (~is_pos).any() else None,
    }


def _undefined_reasons(positive_class, positive, y_true, point):
    """Why each headline figure that came out None is undefined."""
    reasons = {}
    if point["roc_auc"] is None:
        reasons["roc_auc"] = "y_true holds a single class; ROC AUC needs cases of two"
    if positive is None:
        why = f"'{positive_class}' is not one of the class names"
        return {**reasons, "sensitivity": why, "specificity": why}
    if not (y_true == positive).any():
        reasons["sensitivity"] = f"no '{positive_class}' cases in y_true"
    if (y_true == positive).all():
        reasons["specificity"] = f"every case in y_true is '{positive_class}'"
    return reasons


def _roc_aucs(y_true, probs, class_names):
    aucs, undefined = {}, {}
    for i, name in enumerate(class_names):
        n_class = int((y_true == i).sum())
        if n_class == 0:
            aucs[name], undefined[name] = None, "class absent from y_true"
        elif n_class == len(y_true):
            aucs[name], undefined[name] = None, "every case belongs to this class"
        else:
            aucs[name] = float(roc_auc_score(y_true == i, probs[:, i]))
    return aucs, undefined


def _per_class(y_true, y_pred, class_names):
    k = len(class_names)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=range(k), zero_division=0
    )
    # multilabel_confusion_matrix gives one-vs-rest [[tn, fp], [fn, tp]] per class.
    ovr = multilabel_confusion_matrix(y_true, y_pred, labels=range(k))
    return {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
            "tp": int(ovr[i, 1, 1]),
            "fp": int(ovr[i, 0, 1]),
            "tn": int(ovr[i, 0, 0]),
            "fn": int(ovr[i, 1, 0]),
        }
        for i, name in enumerate(class_names)
    }


def _with_ci(value, samples):
    value = None if value is None or np.isnan(value) else float(value)
    ci = None
    if value is not None and samples is not None and np.isfinite(samples).any():
        lo, hi = np.nanpercentile(samples, [(100 - CI_LEVEL) / 2, (100 + CI_LEVEL) / 2])
        ci = [float(lo), float(hi)]
    return {"value": value, "ci95": ci}


def group_codes(groups, n: int) -> np.ndarray:
    """Group index per film (0..G-1): one per distinct non-empty id, one per film without an id."""
    if groups is None:
        return np.arange(n)
    groups = np.asarray(groups, dtype=object).astype(str)
    if groups.shape != (n,):
        raise ValueError(f"groups must have shape ({n},), got {groups.shape}")
    codes = np.empty(n, np.int64)
    named = groups != ""
    ids, index = np.unique(groups[named], return_inverse=True)
    codes[named] = index
    codes[~named] = len(ids) + np.arange(int((~named).sum()))
    return codes


def bootstrap_weights(codes: np.ndarray, n_bootstrap: int, seed: int) -> np.ndarray | None:
    """(B, N) film weights: how often each film's group was drawn in resample b; None for B = 0.

    Draws G groups with replacement per resample, so every figure is a weighted version
    of its full-sample formula and no resample needs a Python loop.
    """
    if n_bootstrap <= 0 or not len(codes):
        return None
    n_groups = int(codes.max()) + 1
    draws = np.random.default_rng(seed).integers(0, n_groups, size=(n_bootstrap, n_groups))
    offsets = (np.arange(n_bootstrap)[:, None] * n_groups + draws).ravel()
    counts = np.bincount(offsets, minlength=n_bootstrap * n_groups).reshape(n_bootstrap, n_groups)
    return counts[:, codes].astype(np.float64)


def ci_method(codes: np.ndarray) -> str:
    """What the intervals resampled: groups of films, or films when no two films share a group."""
    n, n_groups = len(codes), int(codes.max()) + 1 if len(codes) else 0
    if n_groups == n:
        return (f"{CI_LEVEL}% percentile bootstrap over films (no patient ids or near-duplicates group them, "
                "so each film is drawn on its own)")
    return (f"{CI_LEVEL}% percentile bootstrap over patient / near-duplicate groups ({n_groups} groups of "
            f"{n} films; a drawn group brings all its films)")


def _bootstrap(y_true, probs, y_pred, auc_classes, positive, weights):
    """Each headline figure on each row of ``weights`` (B, N): {figure name: (B,) array}."""
    if weights is None:
        return {}
    n_bootstrap = len(weights)
    n, k = probs.shape

    cell = np.zeros((n, k * k))
    cell[np.arange(n), y_true * k + y_pred] = 1.0
    cm = (weights @ cell).reshape(n_bootstrap, k, k)  # cm[b, true, pred]
    tp = np.diagonal(cm, axis1=1, axis2=2)
    fp, fn = cm.sum(axis=1) - tp, cm.sum(axis=2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        # As for the point estimate, macro F1 is over the classes present in each
        # resample; a resample can miss a rare class, which must not count as F1 0.
        f1 = np.where(tp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
        drawn = weights.sum(axis=1)  # films in each resample: groups differ in size
        samples = {
            "accuracy": tp.sum(axis=1) / drawn,
            "macro_f1": _nanmean_rows(f1),
        }
        if positive is not None:
            tn = drawn[:, None] - tp - fp - fn
            samples["sensitivity"] = tp[:, positive] / (tp[:, positive] + fn[:, positive])
            samples["specificity"] = tn[:, positive] / (tn[:, positive] + fp[:, positive])
        if auc_classes:
            per_class = [_weighted_auc(weights, y_true == i, probs[:, i]) for i in auc_classes]
            samples["roc_auc"] = _nanmean_rows(np.stack(per_class, axis=1))
    return samples


def _weighted_auc(weights, is_positive, scores):
    """ROC AUC (ties count one half) of each row of case weights: (B,) array."""
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    w = weights[:, order]
    pos = np.add.reduceat(w * is_positive[order], starts, axis=1)  # (B, unique scores)
    neg = np.add.reduceat(w * ~is_positive[order], starts, axis=1)
    neg_below = np.cumsum(neg, axis=1) - neg
    wins = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return wins / (pos.sum(axis=1) * neg.sum(axis=1))


def _nanmean_rows(values):
    counts = np.isfinite(values).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, np.nansum(values, axis=1) / np.maximum(counts, 1), np.nan)
