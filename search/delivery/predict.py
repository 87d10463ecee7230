"""Predict the class of image files with an exported model or a run's best winner."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np

from cxr_tuner.data.errors import UserError
from cxr_tuner.data.errors import DecodeFailure
from cxr_tuner.data.images import decode_image
from cxr_tuner.search.evaluation import gradcam
from cxr_tuner.search.engine.config import load_config
from cxr_tuner.hypermodels.ensemble import ENSEMBLE_NAME  # imports hypermodels.layers, whose layers ensembles and older files need
from cxr_tuner.hypermodels.registry import BUILT_IN, Backbones
from cxr_tuner.search.delivery.export import CARD_FILE, FILES
from cxr_tuner.search.engine.layout import FINAL_RECORD, WINNER_MODEL, RunLayout


def load_model(source) -> tuple[keras.Model, tuple[str, ...]]:
    """The model and its class names from a run directory or a ``.keras`` file.

    A run directory gives ``export/model.keras`` if exported, else its final
    model (``winners/final``) or, before one is assembled, its best winner. A
    ``.keras`` file takes its class names from the ``model_card.json`` beside it,
    or from the run it lies in (``RUN_DIR/winners/<rank>-<id>/``).

    Raises:
        UserError: If the source is neither, or the class names cannot be found.
    """
    path = _model_path(source)
    return keras.saving.load_model(path, safe_mode=True, compile=False), _class_names(path)


def _model_path(source) -> Path:
    source = Path(source)
    layout = RunLayout(source)
    if layout.config.is_file():
        exported = layout.export / FILES["keras"]
        return exported if (layout.export / CARD_FILE).is_file() else layout.final_model() / WINNER_MODEL
    if source.suffix == ".keras" and source.is_file():
        return source
    raise UserError(f"{source} is neither a run directory nor a .keras file; pass one of those.")


def operating_point(model_path: Path) -> dict | None:
    """The threshold chosen on validation for the model at ``model_path`` (from its card or final.json)."""
    for name in (CARD_FILE, FINAL_RECORD):
        if (model_path.parent / name).is_file():
            return json.loads((model_path.parent / name).read_text()).get("operating_point")
    return None


def finding_thresholds(model_path: Path) -> dict | None:
    """A multi-label model's threshold per finding, chosen on validation (its card or final.json); None otherwise."""
    card, record = model_path.parent / CARD_FILE, model_path.parent / FINAL_RECORD
    if card.is_file():
        return json.loads(card.read_text()).get("thresholds")
    if record.is_file():
        points = json.loads(record.read_text()).get("operating_points")
        return {name: point["threshold"] for name, point in points.items()} if points else None
    return None


def _is_multilabel(model: keras.Model) -> bool:
    """Whether the model ends in sigmoid outputs (findings) rather than a softmax."""
    if any(type(layer).__name__ == "FindingTemperature" for layer in model.layers):
        return True
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    return bool(dense) and dense[-1].activation is keras.activations.sigmoid


def _class_names(model_path: Path) -> tuple[str, ...]:
    card = model_path.parent / CARD_FILE
    if card.is_file():
        return tuple(json.loads(card.read_text())["class_names"])
    run_dir = model_path.parent.parent.parent  # RUN_DIR/winners/<rank>-<id>/model.keras
    if RunLayout(run_dir).config.is_file():
        return load_config(run_dir).class_names
    raise UserError(f"No {CARD_FILE} beside {model_path} to name its classes; export the model with "
                    "`cxr-tuner export RUN_DIR` or pass the run directory instead.")


def predict_images(source, image_paths, gradcam_dir=None, target_class: str | None = None,
                   layer: str | None = None) -> list[dict]:
    """Class probabilities for each image; unreadable images get an error entry.

    Args:
        source: A run directory or a ``.keras`` file (see `load_model`).
        image_paths: Image files (PNG, JPEG, DICOM).
        gradcam_dir: If given, writes a Grad-CAM overlay per image there.
        target_class: Class the heatmaps explain; default each image's predicted class.
        layer: Grad-CAM layer; default the backbone's from the registry.

    Returns:
        Per image, in order: ``{"path", "probabilities": {class: p}, "predicted"}``
        (plus ``"gradcam"``: the overlay's path; ``"operating_point"``: the class's
        threshold chosen on validation and whether this image reaches it), or ``{"path", "error"}``.
    """
    model, names = load_model(source)
    if target_class is not None and target_class not in names:
        raise UserError(f"Unknown class {target_class!r}; the model's classes are {', '.join(names)}.")
    size = model.inputs[0].shape[1]
    path = _model_path(source)
    multilabel = _is_multilabel(model)
    thresholds = finding_thresholds(path) if multilabel else None
    point = None if multilabel else operating_point(path)
    if gradcam_dir is not None and model.name == ENSEMBLE_NAME and layer is None:
        raise UserError("The model is an ensemble; Grad-CAM explains one model: pass one member's "
                        "model.keras (RUN_DIR/winners/1-*/model.keras), or --layer.")
    entries, images = [], []
    for path in map(str, image_paths):
        try:
            images.append(decode_image(path, size)[..., None])
            entries.append({"path": path})
        except (DecodeFailure, OSError) as error:
            entries.append({"path": path, "error": str(error) or type(error).__name__})
    good = [entry for entry in entries if "error" not in entry]
    if good:
        batch = np.stack(images)
        probs = model.predict(batch, verbose=0)
        for entry, row in zip(good, probs):
            entry["probabilities"] = {name: float(p) for name, p in zip(names, row)}
            if multilabel:
                # Findings are answered one by one: each its probability, threshold and call.
                cut = thresholds or {name: 0.5 for name in names}
                entry["findings"] = {name: {"probability": float(p), "threshold": float(cut[name]),
                                            "called": bool(p >= cut[name])} for name, p in zip(names, row)}
                entry["called"] = [name for name in names if entry["findings"][name]["called"]]
                entry["thresholds_from"] = "validation" if thresholds else "0.5 (no thresholds were chosen)"
                continue
            entry["predicted"] = names[int(row.argmax())]
            if point:
                called = bool(row[names.index(point["class"])] >= point["threshold"])
                entry["operating_point"] = {"class": point["class"], "threshold": point["threshold"],
                                            "called": called, "rule": point["how_to_apply"]}
        if gradcam_dir is not None:
            explained = names.index(target_class) if target_class else None
            if explained is None and multilabel:  # each film's likeliest finding
                explained = np.asarray(probs).argmax(axis=1)
            layer = layer or gradcam.default_layer(model, _run_backbones(_model_path(source)))
            _write_overlays(model, layer, batch, good, explained, Path(gradcam_dir))
    return entries


def _run_backbones(model_path: Path) -> Backbones:
    """The backbones of the run a card-less model lies in (``RUN_DIR/winners/<rank>-<id>/``), else the built-ins."""
    run_dir = model_path.parent.parent.parent
    if not (model_path.parent / CARD_FILE).is_file() and RunLayout(run_dir).config.is_file():
        return load_config(run_dir).backbone_specs
    return BUILT_IN


def _write_overlays(model, layer: str, batch, entries, class_index, out: Path) -> None:
    explainer = gradcam.gradcam_model(model, layer)
    maps = gradcam.heatmaps(explainer, batch, class_index)
    used = set()
    for i, (entry, image, heatmap) in enumerate(zip(entries, batch, maps)):
        name = f"{Path(entry['path']).stem}-gradcam.png"
        name = name if name not in used else f"{i}-{name}"  # two inputs with one file name
        used.add(name)
        entry["gradcam"] = str(gradcam.save_overlay(image, heatmap, out / name))
