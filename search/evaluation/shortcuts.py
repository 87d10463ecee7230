"""Shortcut evidence for the report: Grad-CAM energy in the chest, per-source figures,
external sets beside the test split, and the verdict block that opens report.md.

The verdict is rebuilt from the files in the report folder (``metrics.json``,
``shortcuts.json``, ``external-*/metrics.json``), so an ``evaluate --data`` run later
folds its set into the same report.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from matplotlib.patches import Rectangle

from cxr_tuner.data import files
from cxr_tuner.search.engine.text import number_text
from cxr_tuner.search.evaluation import gradcam
from cxr_tuner.search.evaluation.metrics import classification_metrics
from cxr_tuner.search.engine.text import figure_text
from cxr_tuner.search.evaluation.probe import CHEST_BOX, chest_area, chest_mask
from cxr_tuner.search.engine.layout import SPLIT_STAMP

SHORTCUTS_FILE = "shortcuts.json"
VERDICT_START, VERDICT_END = "<!-- verdict -->", "<!-- /verdict -->"
ABOVE_CHANCE = 0.10  # chest-hidden accuracy this far above chance (CI's lower end) is a warning
EXTERNAL_DROP = 0.05  # macro-F1 this much lower on an external set is a warning
_BATCH = 32


def energy_shares(explainer: keras.Model, images: np.ndarray, class_index=None,
                  maps: np.ndarray | None = None) -> np.ndarray:
    """Per image, the share of its Grad-CAM heatmap (upsampled to the image) inside `CHEST_BOX`.

    NaN for an image whose heatmap is all zero. ``class_index`` as in `gradcam.heatmaps`;
    ``maps``: those heatmaps when already computed (`gradcam.all_heatmaps`).
    """
    size = images.shape[1:3]
    mask = chest_mask(*size)
    if maps is None:
        maps = gradcam.all_heatmaps(explainer, images, class_index, _BATCH)
    shares = []
    for start in range(0, len(images), _BATCH):
        upsampled = tf.image.resize(maps[start:start + _BATCH, ..., None], size, method="bilinear").numpy()[..., 0]
        total = upsampled.sum(axis=(1, 2))
        inside = (upsampled * mask).sum(axis=(1, 2))
        shares.append(np.divide(inside, total, out=np.full_like(total, np.nan), where=total > 0))
    return np.concatenate(shares)


def energy_summary(shares: np.ndarray, labels, class_names) -> dict:
    """Mean, standard deviation and quartiles of the chest share per true class and overall."""
    def stats(values):
        if not len(values):
            return {"n": 0, "mean": None, "reason": "no images"}
        values = values[np.isfinite(values)]
        if not len(values):  # the model's gradients at the Grad-CAM layer were zero for every image
            return {"n": 0, "mean": None, "reason": "every Grad-CAM heatmap is all zero"}
        q1, median, q3 = np.percentile(values, [25, 50, 75])
        return {"n": int(len(values)), "mean": float(values.mean()), "std": float(values.std()),
                "q1": float(q1), "median": float(median), "q3": float(q3)}

    labels = np.asarray(labels)
    per_class = {name: stats(shares[labels == i]) for i, name in enumerate(class_names)}
    return {"per_class": per_class, "all": stats(shares), "uniform_reference": chest_area()}


def least_inside_gallery(explainer, images, labels, probs, shares, class_names, path, count: int = 12,
                         maps: np.ndarray | None = None):
    """A page of the test images with the least Grad-CAM energy in the chest box (box drawn).

    ``maps``: every image's heatmap of its predicted class, when already computed.
    """
    order = np.argsort(np.where(np.isfinite(shares), shares, np.inf), kind="stable")[:count]
    if not len(order):
        return None
    predicted = probs.argmax(axis=1)
    maps = gradcam.heatmaps(explainer, images[order], predicted[order]) if maps is None else maps[order]
    figure, axes = gradcam.grid_figure(len(order), "Least Grad-CAM energy inside the chest box (dashed)")
    size = images.shape[1]
    top, bottom, left, right = (f * size for f in CHEST_BOX)
    for ax, row, heatmap in zip(axes, order, maps):
        ax.imshow(gradcam.overlay(images[row], heatmap))
        ax.add_patch(Rectangle((left, top), right - left, bottom - top, fill=False, color="white",
                               linestyle="--", linewidth=1))
        ax.set_title(f"true {class_names[labels[row]]}\npred {class_names[predicted[row]]} "
                     f"in box {shares[row]:.2f}", fontsize=8)
    for ax in axes:
        ax.axis("off")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def per_source(labels, probs, sources, class_names, groups=None) -> dict:
    """Accuracy, macro-F1 and COVID sensitivity (with CIs over ``groups``) per source; {} without sources."""
    sources = np.asarray(sources)
    groups = None if groups is None else np.asarray(groups, dtype=object)
    if not sources.size or not any(sources):
        return {}
    figures = {}
    for name in sorted(set(sources.tolist())):
        rows = sources == name
        metrics = classification_metrics(np.asarray(labels)[rows], probs[rows], class_names,
                                         groups=None if groups is None else groups[rows])
        figures[name or "(none)"] = {"n": metrics["n"], "accuracy": metrics["accuracy"],
                                     "macro_f1": metrics["macro_f1"],
                                     "covid_sensitivity": metrics["covid_sensitivity"]}
    return figures


def verdict_block(report_dir, test_metrics: dict | None = None) -> str:
    """Markdown of the verdict, from the files in ``report_dir`` (see module docstring).

    ``test_metrics``: the test split's figures when its ``metrics.json`` is not written yet.
    External sets evaluated on another split than the test figures' are left out.
    """
    report_dir = Path(report_dir)
    test = test_metrics or _read(report_dir / "metrics.json")
    found = _read(report_dir / SHORTCUTS_FILE) or {}
    if test is None:
        return ""
    sets = [("test split (same sources)", test)]
    for path in sorted(report_dir.glob("external-*/metrics.json")):
        external = _read(path)
        if external.get(SPLIT_STAMP) == test.get(SPLIT_STAMP):
            sets.append((path.parent.name.removeprefix("external-"), external))
    lines = ["## Verdict", _figures_table(sets)]
    probe = found.get("probe")
    if probe:
        lines += ["", _probe_table(probe)]
    energy = found.get("energy")
    if energy:
        lines += ["", _energy_sentence(energy)]
    warnings = _warnings(sets, probe, energy, found.get("source_warnings", []))
    lines += [""] + ([f"- **Warning:** {w}" for w in warnings] if warnings else
                     ["No sign of shortcuts in these figures (which cannot rule them out)."])
    return "\n".join([VERDICT_START, *lines, VERDICT_END])


def _energy_sentence(energy: dict) -> str:
    overall = energy["all"]
    if overall.get("mean") is None:
        return f"Grad-CAM energy inside the chest box: {_share(overall)}."
    per_class = ", ".join(f"{name} {_share(row, '.2f')}" for name, row in energy["per_class"].items())
    return (f"Grad-CAM energy inside the chest box: {_share(overall, '.2f')} on average (per class: {per_class}; "
            f"a heatmap spread evenly would give {number_text(energy.get('uniform_reference'), '.2f')}).")


def _share(row: dict, spec: str = ".3f") -> str:
    return number_text(row.get("mean"), spec, row.get("reason", "not measured"))


def refresh_verdict(report_dir) -> None:
    """Rewrites the verdict block of ``report_dir/report.md`` in place, if the report exists."""
    path = Path(report_dir) / "report.md"
    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8")
    if VERDICT_START in text and VERDICT_END in text:
        before, rest = text.split(VERDICT_START, 1)
        text = before + verdict_block(report_dir) + rest.split(VERDICT_END, 1)[1]
        files.write_text(path, text)


def _figures_table(sets) -> str:
    lines = ["| Set | n | Accuracy [95% CI] | Macro F1 [95% CI] | COVID sensitivity | COVID specificity |",
             "|---|---|---|---|---|---|"]
    for name, metrics in sets:
        cells = " | ".join(figure_text(metrics.get(key)) for key in
                           ("accuracy", "macro_f1", "covid_sensitivity", "covid_specificity"))
        lines.append(f"| {name} | {metrics['n']} | {cells} |")
    return "\n".join(lines)


def _probe_table(probe) -> str:
    rows = [("Model, chest hidden", "winner_chest_hidden"), ("Model, only the chest kept", "winner_chest_only"),
            ("Fresh head on chest-hidden features", "fresh_head_chest_hidden")]
    lines = ["| Chest-hidden probe (test split) | Accuracy [95% CI] | Chance |", "|---|---|---|"]
    lines += [f"| {label} | {figure_text(probe[key].get('accuracy'))} | {number_text(probe[key].get('chance'))} |"
              for label, key in rows]
    box = probe["chest_box"]
    lines.append(f"\nChest box: rows {box['top']:.0%}-{box['bottom']:.0%}, columns {box['left']:.0%}-"
                 f"{box['right']:.0%} of the image, hidden by the mean of the rest.")
    return "\n".join(lines)


def _warnings(sets, probe, energy, source_warnings) -> list[str]:
    found = [w.removeprefix("WARNING: ") for w in source_warnings]
    if probe:
        head = probe["fresh_head_chest_hidden"]
        low = (head["accuracy"].get("ci95") or [head["accuracy"].get("value")])[0]
        if low is not None and low - head["chance"] >= ABOVE_CHANCE:
            found.append(f"with the lungs hidden, a fresh head still scores accuracy "
                         f"{number_text(head['accuracy']['value'])} (chance {number_text(head['chance'])}): "
                         "the images carry their label outside the chest, so "
                         "part of the test score can come from markers, borders or the source's look.")
    if energy and energy["all"]["mean"] is not None and energy["all"]["mean"] < energy["uniform_reference"]:
        found.append(f"the model's Grad-CAM energy inside the chest ({energy['all']['mean']:.2f}) is below "
                     f"what an even spread gives ({energy['uniform_reference']:.2f}): it looks outside the lungs.")
    test_f1 = sets[0][1]["macro_f1"]["value"]
    for name, metrics in sets[1:]:
        f1 = metrics["macro_f1"]["value"]
        if test_f1 is not None and f1 is not None and test_f1 - f1 >= EXTERNAL_DROP:
            found.append(f"macro-F1 drops from {test_f1:.3f} on the test split to {f1:.3f} on {name}: "
                         "the test figures overstate what to expect on other sources.")
    return found


def _read(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def write_shortcuts(path, record: dict) -> Path:
    """Writes the shortcut evidence as JSON, whole."""
    files.write_json(path, record)
    return Path(path)


def checks_section(record: dict, out) -> str:
    """The report's "Shortcut checks" section: per-source figures, Grad-CAM energy per class, gallery."""
    parts = []
    if record.get("per_source"):
        lines = ["Per source:", "", "| Source | n | Accuracy [95% CI] | Macro F1 [95% CI] | COVID sensitivity |",
                 "|---|---|---|---|---|"]
        lines += [f"| {name} | {row['n']} | {figure_text(row['accuracy'])} | {figure_text(row['macro_f1'])} "
                  f"| {figure_text(row['covid_sensitivity'])} |" for name, row in record["per_source"].items()]
        parts.append("\n".join(lines))
    else:
        parts.append("No source column in the manifest: no per-source figures.")
    energy = record.get("energy")
    if energy:
        lines = ["Share of Grad-CAM energy (predicted class) inside the chest box, by true class:", "",
                 "| Class | n | Mean | SD | Median [IQR] |", "|---|---|---|---|---|"]
        for name, row in energy["per_class"].items():
            if row.get("mean") is None:
                lines.append(f"| {name} | {row.get('n', 0)} | {_share(row)} | | |")
            else:
                lines.append(f"| {name} | {row['n']} | {row['mean']:.3f} | {row['std']:.3f} "
                             f"| {row['median']:.3f} [{row['q1']:.3f}, {row['q3']:.3f}] |")
        parts.append("\n".join(lines))
    if record.get("least_inside_gallery") not in (None, "None"):
        link = Path(record["least_inside_gallery"]).relative_to(Path(out)).as_posix()
        parts.append(f"[Test images with the least energy inside the chest box]({link})")
    return "\n\n".join(parts)
