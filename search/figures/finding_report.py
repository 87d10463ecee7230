"""Multi-label figures and their markdown: per-finding tables, probe and per-source AUCs, the final model's section.

Pure: targets (1 / 0 / masked), probabilities and records in, dicts and text out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cxr_tuner.search.figures.findings import MASKED
from cxr_tuner.search.figures.text import figure_text, number_text


def findings_table(metrics: dict, points: dict) -> str:
    """A headline line (macro and micro ROC AUC, macro AP) and the per-label markdown table.

    Args:
        metrics: the dict from `search.figures.findings.label_metrics` (figures on the test films).
        points: the dict from `search.figures.findings.choose_thresholds` (the rule that chose each threshold).
    """
    headline = (f"Macro ROC AUC {figure_text(metrics['macro_auc'])} over "
                f"{len(metrics['macro_auc'].get('labels', []))} of {len(metrics['labels'])} labels; "
                f"micro ROC AUC {figure_text(metrics['micro_auc'])} "
                f"({metrics['micro_auc'].get('entries', 0)} unmasked entries); "
                f"macro AP {figure_text(metrics['macro_ap'])} ({metrics['ci_method']}, "
                f"{metrics['n_bootstrap']} resamples).")
    lines = ["| Label | Positives | ROC AUC [95% CI] | AP [95% CI] | Threshold | Rule | Sensitivity "
             "| Specificity | TP | FP | TN | FN | ECE |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in metrics["per_label"].items():
        point = points.get(name, {})
        rule = point.get("rule_text", "not recorded")
        ece = row["ece"]
        cells = [name, f"{row['positives']} of {row['positives'] + row['negatives']}",
                 figure_text(row["roc_auc"]), figure_text(row["average_precision"]),
                 number_text(row["threshold"], ".4f"), rule,
                 figure_text(row["sensitivity"]), figure_text(row["specificity"]),
                 str(row["tp"]), str(row["fp"]), str(row["tn"]), str(row["fn"]),
                 number_text(ece["value"], ".3f", ece.get("reason", "undefined"))]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return headline + "\n\n" + "\n".join(lines)


def result_line(metrics: dict, out: Path) -> str:
    """The line a multi-label evaluate ends with: macro / micro AUC, the weakest finding, where the report is."""
    per = {n: row.get("roc_auc", {}).get("value") for n, row in metrics["per_label"].items()}
    defined = {n: v for n, v in per.items() if v is not None}
    weakest = min(defined, key=defined.get) if defined else None
    macro = metrics.get("macro_auc") or {}
    return (f"macro AUC {number_text(macro.get('value'), '.3f', macro.get('reason', 'undefined'))}, micro AUC "
            f"{number_text((metrics.get('micro_auc') or {}).get('value'))} over {len(per)} findings on {metrics['n']} "
            f"films" + (f" (lowest: {weakest} {defined[weakest]:.3f})" if weakest else "")
            + f"; report: {Path(out) / 'report.html'} (and report.md)")


def auc(y, scores):
    """ROC AUC of one finding on its unmasked films; None without both a positive and a negative."""
    known = y != MASKED
    y, scores = y[known], scores[known]
    return float(roc_auc_score(y, scores)) if 0 < y.sum() < len(y) else None


def checks_markdown(checks: dict, out=None) -> str:
    """The report's "Shortcut checks per finding" section: the probe's AUCs and the AUC per source."""
    lines = []
    if checks.get("probe"):
        lines += ["Chest-hidden probe (ROC AUC, chance 0.5): the chest box hidden, only the chest kept, and a fresh "
                  "logistic head trained on the model's features of chest-hidden training films. A fresh head far "
                  "above 0.5 means the finding can be read outside the lungs (markers, devices, the source).", "",
                  "| Finding | Chest hidden | Chest only | Fresh head, chest hidden |", "|---|---|---|---|"]
        lines += [f"| {n} | {number_text(r['winner_chest_hidden'])} | {number_text(r['winner_chest_only'])} "
                  f"| {number_text(r['fresh_head_chest_hidden'])} |" for n, r in checks["probe"].items()]
    if checks.get("per_source"):
        names = list(next(iter(checks["per_source"].values())))
        lines += ["", "ROC AUC per source (view or site):", "",
                  "| Source | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        lines += [f"| {s} | " + " | ".join(number_text(v, reason="n/a") for v in row.values()) + " |"
                  for s, row in checks["per_source"].items()]
    return "\n".join(lines) or "No source column and no probe for an external set."


def final_markdown(record: dict, metrics: dict) -> str:
    """The report's "Final model" section: the temperature choice, the ensemble, the rank-1 winner alone."""
    lines = [f"- {record['calibration_check']['text']}",
             f"- ensemble of {record['ensemble_size']} ({', '.join(record['members'])})"]
    if metrics.get("uncalibrated_macro_auc"):
        lines.append(f"- macro AUC of the rank-1 winner alone: "
                     f"{number_text((metrics.get('single_best_macro_auc') or {}).get('value'))}")
    return "\n".join(lines)


def per_source(targets: np.ndarray, probs: np.ndarray, sources, names) -> dict:
    """Per source (view or site): each finding's ROC AUC; {} without sources."""
    sources = np.asarray(sources)
    found = {}
    for value in sorted(set(sources.tolist()) - {""}):
        rows = sources == value
        found[value] = {n: auc(targets[rows, i], probs[rows, i]) for i, n in enumerate(names)}
    return found


def probe_figures(targets: np.ndarray, hidden: np.ndarray, only: np.ndarray, features: np.ndarray,
                  train_features: np.ndarray, train_targets: np.ndarray, names) -> dict:
    """Per finding: the model's AUC with the chest hidden and with only the chest, and a fresh logistic head's
    AUC on chest-hidden features, trained on the chest-hidden training films (chance 0.5)."""
    rows = {}
    for i, name in enumerate(names):
        fresh = None
        known = train_targets[:, i] != MASKED
        y_train = train_targets[known, i]
        if 0 < y_train.sum() < len(y_train):
            head = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
            head.fit(train_features[known], y_train)
            fresh = auc(targets[:, i], head.predict_proba(features)[:, 1])
        rows[name] = {"winner_chest_hidden": auc(targets[:, i], hidden[:, i]),
                      "winner_chest_only": auc(targets[:, i], only[:, i]),
                      "fresh_head_chest_hidden": fresh, "chance": 0.5}
    return rows


def probe_line(rows: dict) -> str:
    """The evaluate stage's line about the probe: each finding's fresh-head AUC, the highest named."""
    worst = max(((v["fresh_head_chest_hidden"], k) for k, v in rows.items() if v["fresh_head_chest_hidden"]),
                default=None)
    return ("chest-hidden probe per finding: fresh head AUC " + ", ".join(
        f"{k} {number_text(v['fresh_head_chest_hidden'])}" for k, v in rows.items()) + " (chance 0.5)"
        + (f"; highest {worst[1]}" if worst else ""))


def report_parts(metrics: dict) -> list[str]:
    """report.md's opening parts: the per-finding table and how to read it."""
    return [f"{metrics['n']} test films; findings: {', '.join(metrics['class_names'])}.",
            "## Per finding", findings_table(metrics, metrics.get("operating_points") or {}),
            "Thresholds were chosen on validation (the rule is in each row); TP: films with the finding called "
            "positive, FP: films without it called positive, TN / FN likewise. Masked (uncertain, ignored) "
            "labels are left out of that finding's figures. CIs resample patients, not films."]


def labels_markdown(labels: dict, uncertain: str, min_positive_groups: int) -> str:
    """The report's "Labels" section: what the label file gave, what was dropped, the uncertain policy."""
    lines = [f"- {line}" for line in labels.get("lines", [])]
    lines += [f"- {line}" for line in labels.get("dropped", [])]
    lines.append(f"- uncertain labels (CheXpert/MIMIC -1): {uncertain}; a finding needs at least "
                 f"{min_positive_groups} positive patient groups in every split to be kept")
    return "\n".join(lines)
