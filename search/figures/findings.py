"""Figures, calibration and thresholds of a multi-label model (a film may show several findings), on arrays.

Conventions of every function here: ``y`` is an (N, L) float array, 1 = the finding
is there, 0 = it is not, -1 = masked (unknown): a masked entry is left out of every
figure of its label, and of the pooled ones. ``probs`` is (N, L) sigmoid
probabilities, one independent probability per label; ``names`` the L label names;
``groups`` (N,) patient ids ("" = a group of its own) for the bootstrap, which draws
patients with replacement and keeps all films of a drawn patient (films of one
patient are alike, so drawing films would make the intervals too narrow). Knows
nothing of models or files (pictures are written where they are told).
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
from scipy import sparse
from scipy.optimize import minimize_scalar
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from sklearn.model_selection import GroupKFold

from cxr_tuner.data.errors import UserError
from cxr_tuner.search.figures import operating_point
from cxr_tuner.search.figures.calibration import _LOG_T_BOUNDS, CHECK_FOLDS
from cxr_tuner.search.figures.metrics import (ECE_BINS, _nanmean_rows, _with_ci, bootstrap_weights, ci_method,
                                              group_codes)

MASKED = -1.0
DEFAULT_THRESHOLD = 0.5  # of a label whose validation films cannot set one (no positive or no negative)
FLAG = "--operating-point"  # the flag the operating points are asked with, in the error messages
_CHUNK_CELLS = 4_000_000  # resample x entry cells per bootstrap block: ~32 MB per array, whatever N and L
_P_ROOM = 1e-12  # probabilities are clipped to [_P_ROOM, 1 - _P_ROOM] before taking logits
_SPEC = re.compile(r"^(?P<label>[^:=]+):(?P<metric>[a-z]+)=(?P<target>.+)$")
MODES = ("none", "shared", "per_label")  # calibration choices of a label; on a tie, the earlier wins


def label_metrics(y: np.ndarray, probs: np.ndarray, names: Sequence[str], thresholds: dict,
                  groups: Sequence[str] | None = None, n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """Per-label and pooled figures, with 95% patient-level bootstrap intervals.

    Returned dict (JSON-serialisable; a figure that is undefined is None with a ``reason``)::

        n, labels, n_bootstrap, n_groups, ci_method, n_bins
        per_label: {name: {
            positives, negatives, masked: int (films of each kind for this label)
            prevalence: float | None           positives / (positives + negatives)
            roc_auc, average_precision, sensitivity, specificity, precision:
                {"value": float | None, "ci95": [lo, hi] | None}  (+ "reason" when None)
            threshold: float                   a film is called positive when prob >= threshold
            tp, fp, tn, fn: int                at that threshold
            ece: {"value": float | None, "n_bins": 15}  (+ "reason")}}
        macro_auc, macro_ap: {"value", "ci95", "labels": [the labels averaged]} (+ "reason")
        micro_auc: {"value", "ci95", "entries": int}  (+ "reason")

    ROC AUC and average precision are scikit-learn's on the label's unmasked films;
    a label with no positive (or no negative) film has neither. Macro figures are the
    mean over the labels where the figure is defined; their interval comes from the
    same resamples, each resample averaging the labels defined in it. Micro AUC pools
    every unmasked (film, label) entry. ECE bins the label's positive probability
    in 15 equal-width bins ``((m-1)/15, m/15]`` as `metrics.expected_calibration_error`
    bins the top one, and is the film-weighted mean of ``|share positive - mean
    probability|`` over bins. Resamples where a figure is undefined are skipped.

    Args:
        thresholds: ``{name: threshold}`` for every label (see :func:`choose_thresholds`).
        groups: patient id per film, None = every film its own group.
        n_bootstrap: resamples of the patients (0 disables the intervals).

    Raises:
        ValueError: if the shapes, the values of ``y`` or the thresholds do not fit the names.
    """
    y, probs, names = _validated(y, probs, names)
    missing = [name for name in names if name not in thresholds]
    if missing:
        raise ValueError(f"thresholds has no value for label(s) {', '.join(missing)}")
    codes = group_codes(groups, len(y))
    weights = bootstrap_weights(codes, n_bootstrap, seed)
    per_label, auc_samples, ap_samples = {}, {}, {}
    for j, name in enumerate(names):
        record, samples = _one_label(y[:, j], probs[:, j], float(thresholds[name]), weights)
        per_label[name] = record
        if record["roc_auc"]["value"] is not None:
            auc_samples[name] = samples["roc_auc"]
        if record["average_precision"]["value"] is not None:
            ap_samples[name] = samples["average_precision"]
    return {
        "n": int(len(y)), "labels": list(names), "n_bootstrap": int(n_bootstrap),
        "n_groups": int(codes.max() + 1) if len(codes) else 0,
        "ci_method": ci_method(codes),
        "n_bins": ECE_BINS,
        "per_label": per_label,
        "macro_auc": _macro(per_label, "roc_auc", auc_samples, weights),
        "macro_ap": _macro(per_label, "average_precision", ap_samples, weights),
        "micro_auc": _micro_auc(y, probs, weights),
    }


def _one_label(y_col, p_col, threshold, weights):
    """One label's record and its bootstrap samples ({figure: (B,) array}, None without a bootstrap)."""
    rows = np.flatnonzero(y_col != MASKED)
    is_pos, scores = y_col[rows] == 1, p_col[rows]
    positives, negatives = int(is_pos.sum()), int((~is_pos).sum())
    called = scores >= threshold
    tp, fp = int((called & is_pos).sum()), int((called & ~is_pos).sum())
    fn, tn = positives - tp, negatives - fp
    both = bool(positives and negatives)
    auc_ap = _weighted_auc_ap(weights, rows, is_pos, scores) if weights is not None and both else None
    no_pos = "no positive film for this label" if len(rows) else "every film is masked for this label"
    no_neg = "no negative film for this label" if len(rows) else no_pos
    auc = float(roc_auc_score(is_pos, scores)) if both else None
    ap = float(average_precision_score(is_pos, scores)) if both else None
    ratios = {
        "sensitivity": (called & is_pos, is_pos, no_pos),
        "specificity": (~called & ~is_pos, ~is_pos, no_neg),
        "precision": (called & is_pos, called, "no film is called positive at this threshold"),
    }
    samples = {"roc_auc": auc_ap[0] if auc_ap else None, "average_precision": auc_ap[1] if auc_ap else None}
    record = {
        "positives": positives, "negatives": negatives, "masked": int(len(y_col) - len(rows)),
        "prevalence": positives / len(rows) if len(rows) else None,
        "roc_auc": _figure(auc, samples["roc_auc"], no_pos if not positives else no_neg),
        "average_precision": _figure(
            ap, samples["average_precision"],
            no_pos if not positives else "no negative film for this label: AP is 1 whatever the scores"),
        "threshold": threshold,
    }
    if weights is not None:  # one product for all the ratios' numerators and denominators
        vectors = [_spread(v, rows, len(y_col)) for hit, cases, _ in ratios.values() for v in (hit, cases)]
        sums = weights @ np.stack(vectors, axis=1)
    for i, (figure, (hit, cases, why)) in enumerate(ratios.items()):
        value = float(hit.sum() / cases.sum()) if cases.any() else None
        boot = None
        if value is not None and weights is not None:
            with np.errstate(invalid="ignore", divide="ignore"):
                boot = sums[:, 2 * i] / sums[:, 2 * i + 1]
        record[figure] = _figure(value, boot, why)
    record.update({"tp": tp, "fp": fp, "tn": tn, "fn": fn,
                   "ece": {"value": _binary_ece(is_pos, scores), "n_bins": ECE_BINS}})
    if not len(rows):
        record["ece"]["reason"] = no_pos
    return record, samples


def _spread(values, rows, n):
    """``values`` of the label's unmasked films, as a length-N vector (0 on masked films)."""
    out = np.zeros(n)
    out[rows] = values
    return out


def _figure(value, samples, reason):
    figure = _with_ci(value, samples)
    if figure["value"] is None:
        figure["reason"] = reason
    return figure


def _macro(per_label, key, samples, weights):
    labels = [name for name in per_label if per_label[name][key]["value"] is not None]
    if not labels:
        figure = "ROC AUC" if key == "roc_auc" else "average precision"
        return {"value": None, "ci95": None, "labels": [],
                "reason": f"no label has both a positive and a negative film, which {figure} needs"}
    value = float(np.mean([per_label[name][key]["value"] for name in labels]))
    boot = _nanmean_rows(np.stack([samples[name] for name in labels], axis=1)) if weights is not None else None
    return {**_with_ci(value, boot), "labels": labels}


def _micro_auc(y, probs, weights):
    films, labels = np.nonzero(y != MASKED)
    is_pos, scores = y[films, labels] == 1, probs[films, labels]
    if not is_pos.any() or is_pos.all():
        return {"value": None, "ci95": None, "entries": int(len(films)),
                "reason": "the unmasked entries are all of one kind; ROC AUC needs positives and negatives"}
    value = float(roc_auc_score(is_pos, scores))
    boot = _weighted_auc_ap(weights, films, is_pos, scores, with_ap=False)[0] if weights is not None else None
    return {**_with_ci(value, boot), "entries": int(len(films))}


def _binary_ece(is_positive, scores, n_bins: int = ECE_BINS):
    """ECE of one label over equal-width bins of its positive probability; None without films."""
    if not len(scores):
        return None
    bins = np.clip(np.ceil(scores * n_bins).astype(int) - 1, 0, n_bins - 1)
    gap = np.abs(np.bincount(bins, is_positive.astype(np.float64), n_bins) - np.bincount(bins, scores, n_bins))
    return float(gap.sum() / len(scores))


def _weighted_auc_ap(weights, films, is_positive, scores, with_ap: bool = True):
    """ROC AUC (ties count one half) and average precision of each row of film weights: two (B,) arrays.

    Entry i belongs to film ``films[i]`` and weighs ``weights[b, films[i]]``; with unit
    weights the figures are scikit-learn's. Both need, per distinct positive score, the
    weight of the positives at it and of the negatives below and tied with it: one sparse
    product sums those for all resamples at once (blocks of resamples bound the memory).
    """
    levels = np.unique(scores[is_positive])  # ascending; recall only steps at these
    n_levels = len(levels)
    pos_row = np.searchsorted(levels, scores[is_positive])
    neg_scores = scores[~is_positive]
    neg_bin = np.searchsorted(levels, neg_scores, "left")  # distinct positive scores below it
    tied = (neg_bin < n_levels) & (levels[np.minimum(neg_bin, n_levels - 1)] == neg_scores)
    # Rows: positives at level k | negatives in the gap just below level k (k = n_levels: above
    # all) | negatives tied with level k.
    rows = np.r_[pos_row, np.where(tied, 2 * n_levels + 1 + neg_bin, n_levels + neg_bin)]
    cols = np.r_[films[is_positive], films[~is_positive]]
    n_rows = 3 * n_levels + 1
    sums = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_rows, weights.shape[1]))
    n_boot = len(weights)
    auc, ap = np.full(n_boot, np.nan), np.full(n_boot, np.nan)
    block = max(1, _CHUNK_CELLS // n_rows)
    for lo in range(0, n_boot, block):
        summed = sums @ weights[lo:lo + block].T  # (rows, b)
        pos, gap, tie = summed[:n_levels], summed[n_levels:2 * n_levels + 1], summed[2 * n_levels + 1:]
        below = np.cumsum(gap[:n_levels], axis=0) + np.cumsum(tie, axis=0) - tie
        n_pos, n_neg = pos.sum(axis=0), gap.sum(axis=0) + tie.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            auc[lo:lo + block] = (pos * (below + 0.5 * tie)).sum(axis=0) / (n_pos * n_neg)
            if with_ap:
                # sklearn's AP: sum over thresholds of (recall step) x precision at it.
                tp = n_pos - np.cumsum(pos, axis=0) + pos  # positives scored >= level k
                fp = n_neg - below  # negatives scored >= level k
                precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp + fp > 0)
                ap[lo:lo + block] = np.where((n_pos > 0) & (n_neg > 0), (pos * precision).sum(axis=0) / n_pos,
                                             np.nan)
    return auc, ap


def _validated(y, probs, names):
    y = np.asarray(y, np.float64)
    probs = np.asarray(probs, np.float64)
    names = list(names)
    if probs.ndim != 2 or probs.shape[1] != len(names) or probs.shape != y.shape or not len(y):
        raise ValueError(f"y and probs must both have shape (N, {len(names)}) with N > 0, "
                         f"got {y.shape} and {probs.shape}")
    if not np.isin(y, (0.0, 1.0, MASKED)).all():
        raise ValueError("y must hold 1 (positive), 0 (negative) or -1 (masked) only")
    if not np.isfinite(probs).all() or probs.min() < 0 or probs.max() > 1:
        raise ValueError("probs must be probabilities in [0, 1]")
    return y, probs, names


def scale(probs: np.ndarray, temperatures) -> np.ndarray:
    """``sigmoid(logit(p) / T)``, column j by ``temperatures[j]`` (or one scalar for all)."""
    return _sigmoid(_logits(probs) / np.asarray(temperatures, np.float64))


def fit_temperatures(y: np.ndarray, probs: np.ndarray, shared: bool) -> np.ndarray:
    """The temperature(s) minimising the masked binary cross-entropy, bounded as `calibration.fit_temperature`.

    ``shared``: one temperature for all unmasked entries pooled, repeated L times; else one
    per label, on that label's unmasked films. A label (or, shared, the whole set) without
    both a positive and a negative entry gets 1: one kind of film alone would drive the
    temperature to its bound. Returns an (L,) array.
    """
    y = np.asarray(y, np.float64)
    logits = _logits(probs)
    if shared:
        mask = y != MASKED
        return np.full(y.shape[1], _fit_one(y[mask], logits[mask]))
    return np.array([_fit_one(y[y[:, j] != MASKED, j], logits[y[:, j] != MASKED, j]) for j in range(y.shape[1])])


def _fit_one(targets, logits):
    if not (targets == 1).any() or not (targets == 0).any():
        return 1.0
    result = minimize_scalar(lambda log_t: _bce(targets, logits / np.exp(log_t)), bounds=_LOG_T_BOUNDS,
                             method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))


def _bce(targets, logits):
    """Mean binary cross-entropy from logits, ``softplus(z) - y z`` (no log of 0)."""
    return float((np.logaddexp(0.0, logits) - targets * logits).mean())


def _logits(probs):
    p = np.clip(np.asarray(probs, np.float64), _P_ROOM, 1.0 - _P_ROOM)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z):
    return np.exp(-np.logaddexp(0.0, -z))


def choose_temperatures(y: np.ndarray, probs: np.ndarray, seed: int = 0, names: Sequence[str] | None = None,
                        folds: int = CHECK_FOLDS, criterion: str = "ece", groups=None) -> dict:
    """Per label: no temperature, its own, or the one shared by all labels, by out-of-sample ECE.

    As `calibration.choose_temperature`: K-fold cross-fitting (shuffled with ``seed``), each
    part scaled by the temperatures fitted on the other parts; per label, the choice whose
    pooled held-out ECE is lowest is kept, so a temperature is applied only when it lowers
    it (on a tie the simpler choice wins: none, then shared). The temperature applied is the
    one fitted on all rows. The folds are grouped by patient / near-duplicate (``groups``)
    but not stratified: a film has several labels.
    ``criterion="nll"`` judges by the held-out cross-entropy instead, which is less noisy
    than a 15-bin ECE on a few hundred films of a label.

    Returns:
        ``temperatures`` ((L,) array, 1 where none), ``modes`` (per label, one of
        :data:`MODES`), ``mode`` (the labels' common mode, or ``"mixed"``), ``fitted``
        (``shared`` and ``per_label`` temperatures on all rows), ``check`` (per label
        ``ece_*`` and ``nll_*`` of each choice out of sample, and ``reason``; None when too
        few rows) and ``text``, one line saying what was chosen.
    """
    if criterion not in ("ece", "nll"):
        raise ValueError(f"criterion must be 'ece' or 'nll', got {criterion!r}")
    y, probs, names = _validated(y, probs, names if names is not None else [str(j) for j in range(np.shape(y)[1])])
    n, n_labels = y.shape
    fitted = {"shared": float(fit_temperatures(y, probs, shared=True)[0]),
              "per_label": fit_temperatures(y, probs, shared=False)}
    codes = group_codes(groups, n)
    k = min(folds, int(codes.max()) + 1 if n else 0)
    if k < 2:
        modes = ["none"] * n_labels
        return _temperature_choice(names, modes, fitted, None, k, seed, criterion)
    candidates = {"none": probs, "shared": np.empty_like(probs), "per_label": np.empty_like(probs)}
    for fit_rows, held_out in GroupKFold(n_splits=k, shuffle=True, random_state=seed).split(probs, groups=codes):
        candidates["shared"][held_out] = scale(probs[held_out], fit_temperatures(y[fit_rows], probs[fit_rows], True))
        candidates["per_label"][held_out] = scale(probs[held_out],
                                                  fit_temperatures(y[fit_rows], probs[fit_rows], False))
    check, modes = [], []
    for j in range(n_labels):
        rows = y[:, j] != MASKED
        is_pos = y[rows, j] == 1
        record = {f"ece_{m}": _binary_ece(is_pos, candidates[m][rows, j]) for m in MODES}
        record.update({f"nll_{m}": _bce(is_pos, _logits(candidates[m][rows, j])) if rows.any() else None
                       for m in MODES})
        if not is_pos.any() or is_pos.all():
            mode, record["reason"] = "none", "one_kind_of_film"
        else:
            mode = min(MODES, key=lambda m: record[f"{criterion}_{m}"])  # min keeps the first of equals
            record["reason"] = f"lowers_{criterion}" if mode != "none" else f"does_not_lower_{criterion}"
        check.append(record)
        modes.append(mode)
    return _temperature_choice(names, modes, fitted, check, k, seed, criterion)


def _temperature_choice(names, modes, fitted, check, k, seed, criterion):
    temperatures = np.array([1.0 if m == "none" else fitted["shared"] if m == "shared" else fitted["per_label"][j]
                             for j, m in enumerate(modes)])
    mode = modes[0] if len(set(modes)) == 1 else "mixed"
    if check is None:
        text = f"temperatures: none (T = 1): too few films ({k}) to check a temperature out of sample"
    else:
        by_mode = {m: [names[j] for j, mj in enumerate(modes) if mj == m] for m in MODES}
        parts = []
        if by_mode["shared"]:
            parts.append(f"shared T = {fitted['shared']:.3f} for {', '.join(by_mode['shared'])}")
        if by_mode["per_label"]:
            parts.append("own T for " + ", ".join(f"{names[j]} ({temperatures[j]:.3f})"
                                                  for j, m in enumerate(modes) if m == "per_label"))
        if by_mode["none"]:
            parts.append(f"none for {', '.join(by_mode['none'])}")
        judged = "ECE" if criterion == "ece" else "cross-entropy"
        text = f"temperatures, by {k}-fold cross-fitted {judged} per label (seed {seed}): " + "; ".join(parts)
    return {"temperatures": temperatures, "modes": modes, "mode": mode,
            "fitted": {"shared": fitted["shared"], "per_label": [float(t) for t in fitted["per_label"]]},
            "check": None if check is None else {"method": f"{k}-fold cross-fitting", "folds": k, "seed": int(seed),
                                                  "criterion": criterion, "per_label": dict(zip(names, check))},
            "text": text}


def parse_points(texts: Sequence[str] | None, names: Sequence[str]) -> dict:
    """``LABEL:sensitivity=X`` / ``LABEL:specificity=X`` texts (each may hold several, comma-separated).

    Returns:
        ``{label: (metric, target)}``; labels not named get the default point.

    Raises:
        UserError: one line, for a malformed text, an unknown label or metric, a target
            not in (0, 1], or a label asked for twice; it lists the labels.
    """
    names = list(names)
    labels = f"the labels are {', '.join(names)}"
    points = {}
    for text in texts or []:
        for spec in (part.strip() for part in str(text).split(",") if part.strip()):
            match = _SPEC.match(spec)
            if not match or match["metric"] not in operating_point.METRICS:
                raise UserError(f"{FLAG} {spec!r} is not LABEL:sensitivity=X or LABEL:specificity=X "
                                f"(e.g. {names[0] if names else 'LABEL'}:sensitivity=0.9); {labels}.")
            label = match["label"].strip()
            if label not in names:
                raise UserError(f"{FLAG} {spec!r} names label {label!r}; {labels}.")
            try:
                target = float(match["target"])
            except ValueError:
                target = float("nan")
            if not 0.0 < target <= 1.0:
                raise UserError(f"{FLAG} {spec!r}: the target must be a number in (0, 1], e.g. 0.9; {labels}.")
            if label in points:
                raise UserError(f"{FLAG} asks for label {label!r} twice; give one point per label; {labels}.")
            points[label] = (match["metric"], target)
    return points


def choose_thresholds(y_val: np.ndarray, probs_val: np.ndarray, names: Sequence[str], points: dict) -> dict:
    """Each label's threshold on validation: the asked point's, else the one maximising Youden's J.

    An asked ``(metric, target)`` goes through `operating_point.choose_threshold` (met on new
    films with 95% confidence; the threshold never passes another film's score). The
    default maximises ``J = sensitivity + specificity - 1`` on validation, which weighs a
    missed finding and a false alarm alike whatever the prevalence (accuracy or F1 would
    set a rare finding's threshold by its negatives); of equal J the higher threshold
    wins, and it sits a hair below the chosen film's score as `choose_threshold` places
    it. A label whose validation films cannot set the threshold (no positive, or no
    negative for the default or a specificity target) gets :data:`DEFAULT_THRESHOLD`.

    Returns:
        ``{label: record}``; a record holds ``threshold``, ``rule`` (``"asked"``,
        ``"youden"`` or ``"fallback"``), ``rule_text`` (what chose it, for the report),
        ``metric``/``target`` (asked only, else None), ``validation`` (``sensitivity``,
        ``specificity``, ``positives``, ``negatives``), ``youden_j``, ``guarantee`` (asked
        only) and ``reason`` (fallback only).
    """
    y_val, probs_val, names = _validated(y_val, probs_val, names)
    records = {}
    for j, name in enumerate(names):
        rows = y_val[:, j] != MASKED
        is_pos, scores = y_val[rows, j] == 1, probs_val[rows, j]
        metric, target = points.get(name, (None, None))
        needs = {"sensitivity": "positive", "specificity": "negative"}.get(metric)
        lacking = ("positive" if not is_pos.any() else "negative" if is_pos.all() else None)
        if lacking and (metric is None or needs == lacking):
            asked = f"asked {metric} >= {target:g}, but " if metric else ""
            reason = f"no {lacking} {name} validation film"
            record = _threshold_record(is_pos, scores, DEFAULT_THRESHOLD, "fallback",
                                       f"{asked}{reason}: {DEFAULT_THRESHOLD:g}", metric, target)
            record["reason"] = reason
        elif metric is not None:
            threshold = operating_point.choose_threshold(is_pos, scores, metric, target)
            side = int(is_pos.sum()) if metric == "sensitivity" else int((~is_pos).sum())
            guarantee = operating_point.guarantee(side, target)
            sure = operating_point.guarantee_text({"guarantee": guarantee, "class": name, "metric": metric,
                                                   "target": target})
            record = _threshold_record(is_pos, scores, threshold, "asked",
                                       f"asked {metric} >= {target:g} ({sure})", metric, target)
            record["guarantee"] = guarantee
        else:
            threshold, j_value = _youden(is_pos, scores)
            record = _threshold_record(is_pos, scores, threshold, "youden",
                                       f"default: Youden's J max on validation (J = {j_value:.3f})", None, None)
        records[name] = record
    return records


def _youden(is_positive, scores):
    """The threshold of largest ``sensitivity + specificity - 1`` (the highest of equals), and that J."""
    fpr, tpr, cuts = roc_curve(is_positive, scores, drop_intermediate=False)
    j = tpr[1:] - fpr[1:]  # the first cut is +inf: nothing called, J = 0 by construction
    best = int(np.argmax(j))  # cuts fall, so the first maximum is the highest threshold
    chosen = cuts[1:][best]
    below = scores[scores < chosen]
    threshold = max((chosen + below.max()) / 2 if len(below) else -np.inf, chosen - operating_point.FLOAT_ROOM)
    return float(threshold), float(j[best])


def _threshold_record(is_pos, scores, threshold, rule, rule_text, metric, target):
    called = scores >= threshold
    sens = float(called[is_pos].mean()) if is_pos.any() else None
    spec = float((~called[~is_pos]).mean()) if (~is_pos).any() else None
    return {"threshold": float(threshold), "rule": rule, "rule_text": rule_text, "metric": metric,
            "target": target, "chosen_on": "validation",
            "validation": {"sensitivity": sens, "specificity": spec, "positives": int(is_pos.sum()),
                           "negatives": int((~is_pos).sum())},
            "youden_j": sens + spec - 1 if sens is not None and spec is not None else None}
