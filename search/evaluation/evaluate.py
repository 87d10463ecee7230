"""Evaluate the final model once on the test split (or an external labelled folder).

Writes ``metrics.json``, ``predictions.csv``, training curves, confusion matrix and
ROC pictures, Grad-CAM galleries under ``gradcam/`` and a ``report.md`` tying them
together, and for an assembled final model its calibration, operating point and the
single best beside it (search.evaluation.final). This is the only stage that reads the
test split's labels.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from cxr_tuner.data import cache, files, manifest
from cxr_tuner.data.errors import UserError
from cxr_tuner.search.engine import dataset, timing
from cxr_tuner.search.tuning.hparams import searched_values
from cxr_tuner.search.evaluation import gradcam, html_report, probe, report, shortcuts
from cxr_tuner.search.engine.config import RunConfig
from cxr_tuner.search.engine.text import number_text
from cxr_tuner.search.evaluation.metrics import classification_metrics, roc_curves
from cxr_tuner.search.engine.text import figure_text
from cxr_tuner.search.engine.lock import run_lock
from cxr_tuner.search.engine.layout import SPLIT_STAMP, WINNER_HISTORY, WINNER_HYPERPARAMETERS, WINNER_MODEL
from cxr_tuner.hypermodels.ensemble import CALIBRATION_LAYER, ENSEMBLE_MEAN
from cxr_tuner.search.evaluation.evaluate_findings import evaluate_findings
from cxr_tuner.search.evaluation.report import gallery_index
from cxr_tuner.search.evaluation.final import final_figures, section_markdown


def evaluate(config: RunConfig, data: str | None = None, out=None, layer: str | None = None,
             log: Callable[[str], None] = print) -> dict:
    """Evaluates the final model (the rank-1 winner before one is assembled) and writes the report.

    Args:
        config: The run's config (from ``load_config``).
        data: Another labelled folder or CSV with the run's class names; ``None``
            uses the run's test split.
        out: Output folder; default ``RUN_DIR/report`` (``RUN_DIR/report/external-<name>``
            for ``data``).
        layer: Grad-CAM layer; default the backbone's from the registry.

    Returns:
        The metrics written to ``metrics.json``.
    """
    with run_lock(config.run_dir, "evaluate", log):
        started = time.perf_counter()
        metrics, forward_pass = _evaluate(config, data, out, layer, log)
        if data is None:  # an external set is not a stage of the run
            timing.record(config.layout, "evaluate", time.perf_counter() - started, forward_pass)
        return metrics


def _evaluate(config: RunConfig, data, out, layer, log) -> tuple[dict, dict]:
    if config.multilabel:
        return evaluate_findings(config, data, out, layer, log, _outputs)
    winner = config.layout.best_winner()
    final = config.layout.final_model()  # the calibrated (ensemble) model when assembled, else the winner
    # compile=False: predicted with only; a winner's saved optimizer would be restored for nothing (and warn).
    model = keras.saving.load_model(final / WINNER_MODEL, compile=False)
    images, labels, paths, sources, groups = _test_split(config) if data is None else _external(config, data, log)
    out = Path(out or _default_out(config, data))
    log(f"evaluate: {winner.name} on {len(images)} {'test' if data is None else 'external'} images")
    # One pass gives what the final model answers and, when assembled, its plain average and
    # its rank-1 member's answer (the single best beside it).
    started = time.perf_counter()
    if final != winner:
        probs, raw, single = keras.Model(model.input, _outputs(model)).predict(
            images, batch_size=config.batch_size, verbose=0)
    else:
        probs = model.predict(images, batch_size=config.batch_size, verbose=0)
    forward_pass = {"seconds": time.perf_counter() - started,
                    "what": f"one forward pass of the final model over the {len(images)} test films"}
    metrics = classification_metrics(labels, probs, config.class_names, seed=config.seed, groups=groups)
    metrics["source"] = {"model": str(final / WINNER_MODEL), "data": data or "test split of split.csv"}
    metrics[SPLIT_STAMP] = config.layout.split_digest()
    out.mkdir(parents=True, exist_ok=True)
    # metrics.json comes last and says the report is whole: an interrupted evaluate leaves none.
    (out / config.layout.metrics.name).unlink(missing_ok=True)
    extra_pictures, extra_sections = {}, {}
    if final != winner:
        record = config.layout.read_current(config.layout.final_record, f"run `cxr-tuner evaluate {config.run_dir}`")
        model = keras.saving.load_model(winner / WINNER_MODEL, compile=False)  # Grad-CAM explains the rank-1 member
        sections, extra_pictures = final_figures(record, labels, probs, raw, single, config.class_names, metrics, out,
                                                 groups=groups)
        metrics.update(sections)
        extra_sections["Calibration, operating point, single best and final model"] = section_markdown(sections)
    _write_predictions(out / "predictions.csv", paths, labels, probs, config.class_names)
    pictures = {**_pictures(winner, metrics, labels, probs, config.class_names, out), **extra_pictures}
    explainer = gradcam.gradcam_model(model, layer or gradcam.default_layer(model))
    # Every image's heatmap of its predicted class, once: the galleries and the shortcut checks show them.
    maps = gradcam.all_heatmaps(explainer, np.asarray(images), probs.argmax(axis=1))
    pages = gradcam.write_galleries(explainer, np.asarray(images), labels, probs, config.class_names, out / "gradcam",
                                    log=log, maps=maps)
    sections = {"Grad-CAM galleries": gallery_index(pages, out),
                "Shortcut checks": _shortcut_checks(config, model, explainer, (images, labels, probs, sources, maps, groups),
                                                    out, data is None, log),
                "Model": _model_section(winner), **extra_sections}
    verdict = shortcuts.verdict_block(out, metrics) if data is None else ""
    report.write_report_md(out / "report.md", metrics, pictures, f"Evaluation of {winner.name}", sections,
                           verdict=verdict)
    html_report.write_report_html(out)
    files.write_json(out / config.layout.metrics.name, metrics)
    if out.parent == config.layout.report:
        shortcuts.refresh_verdict(out.parent)  # fold this external set into the run's report
        html_report.refresh(config.layout)  # and into its report.html
    log(result_line(metrics, out))
    return metrics, forward_pass


def _outputs(model: keras.Model) -> list:
    """An assembled model's output, its uncalibrated average and its rank-1 member's output."""
    raw = model.get_layer(CALIBRATION_LAYER).input
    if ENSEMBLE_MEAN not in [layer.name for layer in model.layers]:  # one member, kept flat
        return [model.output, raw, raw]
    # The mean's inputs are the members' outputs, not in rank order (from-scratch members come first).
    first = [t for t in model.get_layer(ENSEMBLE_MEAN).input if t._keras_history.operation.name == "member_1"]
    return [model.output, raw, first[0]]


def result_line(metrics: dict, out: Path) -> str:
    """The line evaluate ends with: headline figures and where the report is (``n/a (why)`` for a missing figure)."""
    return (f"accuracy {figure_text(metrics.get('accuracy'))}, macro F1 {figure_text(metrics.get('macro_f1'))} "
            f"on {number_text(metrics.get('n'), 'd', 'count not recorded')} images; "
            f"report: {Path(out) / 'report.html'} (and report.md)")


def probe_line(record: dict) -> str:
    """The shortcut checks' line: the chest-hidden probe's fresh head and the Grad-CAM energy in the chest."""
    head = (record.get("probe") or {}).get("fresh_head_chest_hidden") or {}
    energy = (record.get("energy") or {}).get("all") or {}
    return (f"chest-hidden probe: fresh head accuracy {figure_text(head.get('accuracy'))} (chance "
            f"{number_text(head.get('chance'))}); Grad-CAM energy in the chest "
            f"{number_text(energy.get('mean'), reason=energy.get('reason', 'not measured'))}")


def _default_out(config: RunConfig, data) -> Path:
    return config.layout.report if data is None else config.layout.external_report(data)


def _test_split(config: RunConfig):
    # config.json always saves overwrite=False, so this reads the split the search saved.
    run_data = dataset.prepare(config, progress=False)
    rows = run_data.indices("test")
    examples = [run_data.examples[i] for i in rows]
    return (run_data.images[rows], run_data.labels[rows], [e.path for e in examples], [e.source for e in examples],
            dataset.leak_groups(examples, run_data.images[rows]))


def _external(config: RunConfig, data: str, log):
    """Decodes an external labelled set and maps its classes onto the run's by name."""
    examples = manifest.discover(data)
    unknown = sorted({e.label for e in examples} - set(config.class_names))
    if unknown:
        raise UserError(f"{data} holds classes the model does not know: {', '.join(unknown)} (it knows "
                        f"{', '.join(config.class_names)}); remove or rename those folders/labels.")
    # A cache of its own: sharing the run's would reorder it and force the test split to re-decode.
    decoded = cache.load_decoded(examples, config.image_size, config.layout.external_cache, progress=False)
    for skipped in decoded.skipped:
        log(f"skipped {skipped.path}: {skipped.reason}")
    labels = np.array([config.class_names.index(e.label) for e in decoded.examples])
    return (decoded.images, labels, [e.path for e in decoded.examples],
            [e.source for e in decoded.examples], dataset.leak_groups(decoded.examples, decoded.images))


def _shortcut_checks(config: RunConfig, model, explainer, scored, out: Path, test_split: bool, log) -> str:
    """Writes shortcuts.json (per source; on the test split also the probe and Grad-CAM energy)."""
    images, labels, probs, sources, maps, groups = scored
    images = np.asarray(images)
    record = {"per_source": shortcuts.per_source(labels, probs, sources, config.class_names, groups)}
    if test_split:
        run_data = dataset.prepare(config, progress=False)
        train = run_data.indices("train")
        record["probe"] = probe.chest_hidden_probe(model, run_data.images[train], run_data.labels[train],
                                                   images, labels, config.class_names, seed=config.seed,
                                                   groups=groups)
        shares = shortcuts.energy_shares(explainer, images, probs.argmax(axis=1), maps=maps)
        record["energy"] = shortcuts.energy_summary(shares, labels, config.class_names)
        record["least_inside_gallery"] = str(shortcuts.least_inside_gallery(
            explainer, images, labels, probs, shares, config.class_names, out / "gradcam" / "least-in-chest.png",
            maps=maps))
        record["source_warnings"] = _source_warnings(config)
        log(probe_line(record))
    shortcuts.write_shortcuts(out / shortcuts.SHORTCUTS_FILE, record)
    return shortcuts.checks_section(record, out)


def _source_warnings(config: RunConfig) -> list[str]:
    findings = dataset.DataFindings.load(config.layout)
    audit = findings.sources.get("audit") if findings else None
    return audit["warnings"] if audit else []


def _write_predictions(path: Path, paths, labels, probs, class_names) -> None:
    files.write_csv(path, ["path", "true", "predicted", *(f"p_{name}" for name in class_names)],
                    ([file, class_names[label], class_names[row.argmax()], *(f"{p:.6f}" for p in row)]
                     for file, label, row in zip(paths, labels, probs)))


def _pictures(winner: Path, metrics: dict, labels, probs, class_names, out: Path) -> dict:
    history = json.loads((winner / WINNER_HISTORY).read_text())
    aucs = metrics["roc_auc"]["per_class"]
    return {
        "Training curves (retrained winner)": report.plot_history(history, out / "training_curves.png"),
        "Confusion matrix": report.plot_confusion_matrix(
            metrics["confusion_matrix"]["matrix"], class_names, out / "confusion_matrix.png"),
        "ROC curves": report.plot_roc(roc_curves(labels, probs, class_names), aucs, out / "roc.png"),
    }


def _model_section(winner: Path) -> str:
    values = json.loads((winner / WINNER_HYPERPARAMETERS).read_text())["values"]
    return "\n".join(f"- {name}: {value}" for name, value in searched_values(values).items())
