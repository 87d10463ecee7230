"""Evaluate a multi-label final model once on the test split (or an external label file), per finding.

Writes the same files as the single-label evaluation (``metrics.json`` last,
``predictions.csv``, ``report.md`` / ``report.html``, Grad-CAM galleries and
``shortcuts.json``), with figures per finding: ROC AUC and average precision with
patient-level bootstrap CIs, sensitivity, specificity and TP/FP/TN/FN at each
finding's threshold (chosen on validation), ECE, and macro / micro AUC.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import keras
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cxr_tuner.data import cache, files, labels as label_files
from cxr_tuner.data.errors import UserError
from cxr_tuner.search.engine import dataset
from cxr_tuner.search.engine.text import number_text
from cxr_tuner.search.evaluation import gradcam, html_report, multilabel, probe, report
from cxr_tuner.search.evaluation.report import gallery_index
from cxr_tuner.search.tuning.hparams import searched_values
from cxr_tuner.search.engine.layout import SPLIT_STAMP, WINNER_HISTORY, WINNER_HYPERPARAMETERS, WINNER_MODEL

NO_THRESHOLD_RULE = "0.5: no final model was assembled, so no threshold was chosen on validation"
PROBE_TRAIN_IMAGES = probe.PROBE_TRAIN_IMAGES


def evaluate_findings(config, data, out, layer, log, outputs) -> tuple[dict, dict]:
    """`search.evaluation.evaluate.evaluate` for a multi-label run; ``outputs`` picks an assembled model's outputs."""
    layout = config.layout
    winner, final = layout.best_winner(), layout.final_model()
    model = keras.saving.load_model(final / WINNER_MODEL, compile=False)
    # Once: the test split's films, and the training films the probe learns from.
    run_data = dataset.prepare(config, progress=False) if data is None else None
    images, targets, paths, sources, groups = _test_split(run_data) if data is None else _external(config, data, log)
    names = list(config.class_names)
    out = Path(out or (layout.report if data is None else layout.external_report(data)))
    log(f"evaluate: {winner.name} on {len(images)} {'test' if data is None else 'external'} films, "
        f"{len(names)} findings")
    started = time.perf_counter()
    record = None
    if final != winner:
        probs, raw, single = keras.Model(model.input, outputs(model)).predict(images, batch_size=config.batch_size,
                                                                              verbose=0)
        record = layout.read_current(layout.final_record, f"run `cxr-tuner evaluate {config.run_dir}`")
        points = record["operating_points"]
    else:
        probs = model.predict(images, batch_size=config.batch_size, verbose=0)
        raw = single = None
        points = {name: {"threshold": 0.5, "rule": "fallback", "rule_text": NO_THRESHOLD_RULE} for name in names}
    forward_pass = {"seconds": time.perf_counter() - started,
                    "what": f"one forward pass of the final model over the {len(images)} test films"}
    probs = np.asarray(probs, dtype=np.float64)
    thresholds = {name: float(points[name]["threshold"]) for name in names}
    metrics = multilabel.label_metrics(targets, probs, names, thresholds, groups=groups, seed=config.seed)
    metrics.update(task="multilabel", n=int(len(images)), class_names=names, thresholds=thresholds,
                   operating_points=points, source={"model": str(final / WINNER_MODEL),
                                                    "data": data or "test split of split.csv"})
    metrics[SPLIT_STAMP] = layout.split_digest()
    if raw is not None:
        metrics["uncalibrated_macro_auc"] = multilabel.label_metrics(
            targets, np.asarray(raw, np.float64), names, thresholds, groups=groups, n_bootstrap=0,
            seed=config.seed).get("macro_auc")
        metrics["single_best_macro_auc"] = multilabel.label_metrics(
            targets, np.asarray(single, np.float64), names, thresholds, groups=groups, n_bootstrap=0,
            seed=config.seed).get("macro_auc")
    out.mkdir(parents=True, exist_ok=True)
    (out / layout.metrics.name).unlink(missing_ok=True)  # metrics.json last: an interrupted evaluate leaves none
    _write_predictions(out / "predictions.csv", paths, targets, probs, names, thresholds)
    pictures = {"Training curves (retrained winner)": report.plot_history(
                    json.loads((winner / WINNER_HISTORY).read_text()), out / "training_curves.png"),
                "ROC curves per finding": multilabel.plot_roc(targets, probs, names, out / "roc.png")}
    member = keras.saving.load_model(winner / WINNER_MODEL, compile=False) if final != winner else model
    explainer = gradcam.gradcam_model(member, layer or gradcam.default_layer(member))
    member_probs = probs if final == winner else np.asarray(single, np.float64)
    pages = gradcam.write_finding_galleries(explainer, np.asarray(images), targets, member_probs, thresholds, names,
                                            out / "gradcam", log=log)
    checks = _shortcut_checks(config, run_data, member, images, targets, member_probs,
                              sources, names, log)
    files.write_json(out / "shortcuts.json", checks)
    lead = "Each heatmap is the map of that finding's logit: where the model looked for that finding."
    sections = {"Grad-CAM galleries per finding": gallery_index(pages, out, lead),
                "Shortcut checks per finding": _checks_markdown(checks),
                "Labels": _labels_markdown(config),
                "Model": "\n".join(f"- {k}: {v}" for k, v in searched_values(
                    json.loads((winner / WINNER_HYPERPARAMETERS).read_text())["values"]).items())}
    if record is not None:
        sections["Final model"] = _final_markdown(record, metrics)
    _write_report(out / "report.md", metrics, points, pictures, f"Evaluation of {winner.name} (findings)", sections)
    html_report.write_report_html(out)
    files.write_json(out / layout.metrics.name, metrics)
    log(result_line(metrics, out))
    return metrics, forward_pass


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


def _test_split(run_data):
    rows = run_data.indices("test")
    examples = [run_data.examples[i] for i in rows]
    return (run_data.images[rows], run_data.labels[rows], [e.path for e in examples], [e.source for e in examples],
            dataset.leak_groups(examples, run_data.images[rows]))


def _external(config, data: str, log):
    """An external label file read as the run's findings; a finding it does not label is masked there."""
    table = label_files.read(data, "multilabel", config.uncertain, config.views or None)
    shared = [n for n in config.class_names if n in table.names]
    if not shared:
        raise UserError(f"{data} labels none of the model's findings ({', '.join(config.class_names)}; it has "
                        f"{', '.join(table.names)}); pass a label file with the same finding names.")
    missing = [n for n in config.class_names if n not in table.names]
    if missing:
        log(f"external set: {', '.join(missing)} not labelled there, left out of its figures")
    decoded = cache.load_decoded(table.examples, config.image_size, config.layout.external_cache, progress=False)
    for skipped in decoded.skipped:
        log(f"skipped {skipped.path}: {skipped.reason}")
    targets = label_files.multi_hot([e.label for e in decoded.examples], config.class_names)
    for name in missing:
        targets[:, list(config.class_names).index(name)] = label_files.MASKED
    return (decoded.images, targets, [e.path for e in decoded.examples], [e.source for e in decoded.examples],
            dataset.leak_groups(decoded.examples, decoded.images))


def _write_predictions(path: Path, paths, targets, probs, names, thresholds) -> None:
    def text(row):
        return "|".join(n for n, v in zip(names, row) if v == 1)

    called = np.column_stack([probs[:, i] >= thresholds[n] for i, n in enumerate(names)])
    files.write_csv(path, ["path", "true", "called", *(f"p_{n}" for n in names)],
                    ([file, text(t), text(c.astype(float)), *(f"{p:.6f}" for p in row)]
                     for file, t, c, row in zip(paths, targets, called, probs)))


def _auc(y, scores):
    known = y != label_files.MASKED
    y, scores = y[known], scores[known]
    return float(roc_auc_score(y, scores)) if 0 < y.sum() < len(y) else None


def _shortcut_checks(config, run_data, model, images, targets, probs, sources, names, log) -> dict:
    """Per finding: AUC per source; on the test split the chest-hidden probe (winner and a fresh head)."""
    sources = np.asarray(sources)
    record = {"per_source": {}}
    for value in sorted(set(sources.tolist()) - {""}):
        rows = sources == value
        record["per_source"][value] = {n: _auc(targets[rows, i], probs[rows, i]) for i, n in enumerate(names)}
    if run_data is None:  # an external set: no training films to probe with
        return record
    train = run_data.indices("train")
    if len(train) > PROBE_TRAIN_IMAGES:
        train = np.sort(np.random.default_rng(config.seed).choice(train, PROBE_TRAIN_IMAGES, replace=False))
    images = np.asarray(images)
    both = keras.Model(model.inputs, [model.output, model.layers[-1].input])
    n = len(images)
    outputs, features = both.predict(np.concatenate([probe.hide_chest(images), probe.keep_chest(images),
                                                     probe.hide_chest(np.asarray(run_data.images[train]))]),
                                     batch_size=32, verbose=0)
    train_targets = run_data.labels[train]
    rows = {}
    for i, name in enumerate(names):
        fresh = None
        known = train_targets[:, i] != label_files.MASKED
        y_train = train_targets[known, i]
        if 0 < y_train.sum() < len(y_train):
            head = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
            head.fit(features[2 * n:][known], y_train)
            fresh = _auc(targets[:, i], head.predict_proba(features[:n])[:, 1])
        rows[name] = {"winner_chest_hidden": _auc(targets[:, i], outputs[:n, i]),
                      "winner_chest_only": _auc(targets[:, i], outputs[n:2 * n, i]),
                      "fresh_head_chest_hidden": fresh, "chance": 0.5}
    record["probe"] = rows
    record["chest_box"] = dict(zip(("top", "bottom", "left", "right"), probe.CHEST_BOX))
    worst = max(((v["fresh_head_chest_hidden"], k) for k, v in rows.items() if v["fresh_head_chest_hidden"]),
                default=None)
    log("chest-hidden probe per finding: fresh head AUC " + ", ".join(
        f"{k} {number_text(v['fresh_head_chest_hidden'])}" for k, v in rows.items()) + " (chance 0.5)"
        + (f"; highest {worst[1]}" if worst else ""))
    return record


def _checks_markdown(checks: dict) -> str:
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


def _labels_markdown(config) -> str:
    found = dataset.DataFindings.load(config.layout)
    labels = found.labels if found else {}
    lines = [f"- {line}" for line in labels.get("lines", [])]
    lines += [f"- {line}" for line in labels.get("dropped", [])]
    lines.append(f"- uncertain labels (CheXpert/MIMIC -1): {config.uncertain}; a finding needs at least "
                 f"{config.min_positive_groups} positive patient groups in every split to be kept")
    return "\n".join(lines)


def _final_markdown(record: dict, metrics: dict) -> str:
    lines = [f"- {record['calibration_check']['text']}",
             f"- ensemble of {record['ensemble_size']} ({', '.join(record['members'])})"]
    if metrics.get("uncalibrated_macro_auc"):
        lines.append(f"- macro AUC of the rank-1 winner alone: "
                     f"{number_text((metrics.get('single_best_macro_auc') or {}).get('value'))}")
    return "\n".join(lines)


def _write_report(path: Path, metrics: dict, points: dict, pictures: dict, title: str, sections: dict) -> Path:
    parts = [f"# {title}", f"{metrics['n']} test films; findings: {', '.join(metrics['class_names'])}.",
             "## Per finding", multilabel.table_markdown(metrics, points),
             "Thresholds were chosen on validation (the rule is in each row); TP: films with the finding called "
             "positive, FP: films without it called positive, TN / FN likewise. Masked (uncertain, ignored) "
             "labels are left out of that finding's figures. CIs resample patients, not films."]
    for caption, image in pictures.items():
        link = Path(os.path.relpath(Path(image).resolve(), path.parent.resolve())).as_posix()
        parts += [f"## {caption}", f"![{caption}]({link})"]
    for heading, body in sections.items():
        parts += [f"## {heading}", body.strip()]
    path.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    return path
