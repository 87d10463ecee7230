"""The report: one evaluation record rendered into metrics.json, predictions, pictures, report.md and report.html.

Figures are built on `matplotlib.figure.Figure` directly (no pyplot), so nothing
touches matplotlib's global state or needs a display.
"""

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from sklearn.metrics import roc_auc_score, roc_curve

from cxr_tuner.data import files
from cxr_tuner.search.engine.layout import SPLIT_STAMP
from cxr_tuner.search.engine.task import task_named
from cxr_tuner.search.engine.task_base import Page
from cxr_tuner.search.evaluation import gradcam, html_report
from cxr_tuner.search.evaluation.probe import CHEST_BOX
from cxr_tuner.search.evaluation.record import Evaluation
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
        curves: ``{class name: (fpr, tpr)}`` as from `search.evaluation.metrics.roc_curves`.
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


def write_report_md(path, title: str, parts: list[str], images: dict, sections: dict | None = None,
                    verdict: str = "") -> Path:
    """Write report.md: the title, the verdict, the task's tables, the pictures, the sections.

    Args:
        path: where to write the markdown file.
        title: the report's top heading.
        parts: the task's opening parts (its tables and how to read them, `Task.report_parts`).
        images: ``{caption: image path}``, shown in this order; paths are linked
            relative to the report's folder so the folder can be moved as a whole.
        sections: ``{heading: markdown body}`` appended at the end
            (e.g. the run's hyperparameters or a Grad-CAM gallery index).
        verdict: markdown shown right under the title (`verdict_block`).

    Returns:
        The path written.
    """
    path = Path(path)
    blocks = [f"# {title}", *([verdict] if verdict else []), *parts]
    for caption, image in images.items():
        link = Path(os.path.relpath(Path(image).resolve(), path.parent.resolve())).as_posix()
        blocks += [f"## {caption}", f"![{caption}]({link})"]
    for heading, body in (sections or {}).items():
        blocks += [f"## {heading}", body.strip()]
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_text(path, "\n\n".join(blocks) + "\n")
    return path


def gallery_index(pages: dict, out: Path,
                  lead: str = "The heatmap shows where the model looked for the class it predicted "
                              "(most confident first).") -> str:
    """The report's list of Grad-CAM pages, linked relative to ``out``, under ``lead``."""
    if not pages:
        return "No images to show."
    lines = [lead]
    lines += [f"- [{caption}]({path.relative_to(out).as_posix()})" for caption, path in pages.items()]
    return "\n".join(lines)


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


SHORTCUTS_FILE = "shortcuts.json"
VERDICT_START, VERDICT_END = "<!-- verdict -->", "<!-- /verdict -->"


def write(out, evaluation: Evaluation, layout) -> dict:
    """Writes the whole report of ``evaluation`` into ``out``; ``metrics.json`` last, saying the report is whole.

    Also folds an external set of the run (``out`` under the run's report folder) into the run's verdict.

    Returns:
        The metrics written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics_file = out / layout.metrics.name
    metrics_file.unlink(missing_ok=True)  # an interrupted evaluate leaves none
    files.write_csv(out / "predictions.csv", *evaluation.predictions)
    pictures = {"Training curves (retrained winner)": plot_history(evaluation.history, out / "training_curves.png")}
    pictures.update({caption: _draw(picture, out) for caption, picture in evaluation.pictures.items()})
    drawn = {page.caption: draw_page(evaluation.images, evaluation.maps[page.file], page, out / "gradcam")
             for page in evaluation.pages}
    listed = {page.caption for page in evaluation.pages if page.listed}
    files.write_json(out / SHORTCUTS_FILE, evaluation.checks)
    heading, lead = evaluation.gallery
    galleries = {caption: path for caption, path in drawn.items() if caption in listed}
    sections = {heading: gallery_index(galleries, out, lead), **evaluation.sections}
    verdict = verdict_block(out, evaluation.metrics) if evaluation.test_split else ""
    write_report_md(out / "report.md", evaluation.title, evaluation.parts, pictures, sections, verdict=verdict)
    html_report.write_report_html(out)
    files.write_json(metrics_file, evaluation.metrics)
    if out.parent == layout.report:
        refresh_verdict(out.parent)  # fold this external set into the run's report
        html_report.refresh(layout)  # and into its report.html
    return evaluation.metrics


def verdict_block(report_dir, test_metrics: dict | None = None) -> str:
    """The verdict opening the run's report, from the files in ``report_dir``; "" when the task has none.

    Rebuilt from ``metrics.json``, ``shortcuts.json`` and ``external-*/metrics.json``, so an
    ``evaluate --data`` run later folds its set into the same report.md. ``test_metrics``: the
    test split's figures when its ``metrics.json`` is not written yet. External sets evaluated
    on another split than the test figures' are left out.
    """
    report_dir = Path(report_dir)
    test = test_metrics or _read(report_dir / "metrics.json")
    if test is None:
        return ""
    sets = [("test split (same sources)", test)]
    for path in sorted(report_dir.glob("external-*/metrics.json")):
        external = _read(path)
        if external.get(SPLIT_STAMP) == test.get(SPLIT_STAMP):
            sets.append((path.parent.name.removeprefix("external-"), external))
    text = task_named(test.get("task")).verdict(sets, _read(report_dir / SHORTCUTS_FILE) or {})
    return "\n".join([VERDICT_START, text, VERDICT_END]) if text else ""


def refresh_verdict(report_dir) -> None:
    """Rewrites the verdict block of ``report_dir/report.md`` in place, if the report has one."""
    path = Path(report_dir) / "report.md"
    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8")
    if VERDICT_START in text and VERDICT_END in text:
        before, rest = text.split(VERDICT_START, 1)
        files.write_text(path, before + verdict_block(report_dir) + rest.split(VERDICT_END, 1)[1])


def _read(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _draw(picture: dict, out: Path) -> Path:
    """Draws one picture of the record into ``out / picture["file"]``."""
    path = out / picture["file"]
    kind = picture["kind"]
    if kind == "confusion":
        return plot_confusion_matrix(picture["matrix"], picture["names"], path)
    if kind == "roc":
        return plot_roc(picture["curves"], picture["aucs"], path)
    if kind == "finding_roc":
        return plot_finding_roc(picture["targets"], picture["probs"], picture["names"], path)
    if kind == "reliability":
        return plot_reliability(picture["labels"], picture["before"], picture["after"], path)
    raise ValueError(f"no drawing for pictures of kind {kind!r}")


def draw_page(images: np.ndarray, maps: np.ndarray, page: Page, folder: Path) -> Path:
    """One Grad-CAM page: the page's films with their heatmaps, titled, the chest box dashed where asked."""
    figure, axes = gradcam.grid_figure(len(page.rows), page.heading)
    size = images.shape[1]
    top, bottom, left, right = (f * size for f in CHEST_BOX)
    for ax, row, heatmap, title in zip(axes, page.rows, maps, page.titles):
        ax.imshow(gradcam.overlay(images[row], heatmap))
        if page.box:
            ax.add_patch(Rectangle((left, top), right - left, bottom - top, fill=False, color="white",
                                   linestyle="--", linewidth=1))
        ax.set_title(title, fontsize=8)
    for ax in axes:
        ax.axis("off")
    path = folder / page.file
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path
