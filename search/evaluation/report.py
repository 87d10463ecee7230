"""The report: one evaluation record rendered into metrics.json, predictions, pictures, report.md and report.html."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from matplotlib.patches import Rectangle

from cxr_tuner.data import files
from cxr_tuner.search.engine.layout import MODEL_STAMP, SPLIT_STAMP
from cxr_tuner.search.engine.task import task_named
from cxr_tuner.search.engine.task_base import Page
from cxr_tuner.search.evaluation import gradcam, html_report
from cxr_tuner.search.evaluation.plots import (plot_confusion_matrix, plot_finding_roc, plot_history, plot_reliability,
                                               plot_roc)
from cxr_tuner.search.evaluation.probe import CHEST_BOX
from cxr_tuner.search.evaluation.record import Evaluation

SHORTCUTS_FILE = "shortcuts.json"
VERDICT_START, VERDICT_END = "<!-- verdict -->", "<!-- /verdict -->"


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


def write(out, evaluation: Evaluation, layout) -> dict:
    """Writes the whole report of ``evaluation`` into ``out``; ``metrics.json`` last, saying the report is whole.

    The pictures are drawn first, while the record's pending checks still run (`Evaluation.settle`).

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
    evaluation.settle()  # the probe ran while the pictures were drawn
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
    on another split or with another final model than the test figures' are left out.
    """
    report_dir = Path(report_dir)
    test = test_metrics or _read(report_dir / "metrics.json")
    if test is None:
        return ""
    sets = [("test split (same sources)", test)]
    for path in sorted(report_dir.glob("external-*/metrics.json")):
        external = _read(path)
        if all(external.get(stamp) == test.get(stamp) for stamp in (SPLIT_STAMP, MODEL_STAMP)):
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
