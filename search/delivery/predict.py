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
from cxr_tuner.search.engine.task import task_named, task_of
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


def _task_and_record(model_path: Path):
    """The task of the model at ``model_path`` and the record saying how to decide: its model card, else (a model
    of a run: ``RUN_DIR/winners/<dir>/model.keras``) the run's task and the final model's ``final.json``, if any."""
    card = model_path.parent / CARD_FILE
    if card.is_file():
        record = json.loads(card.read_text())
        return task_named(record.get("task")), record
    final = model_path.parent / FINAL_RECORD
    record = json.loads(final.read_text()) if final.is_file() else None
    return task_of(load_config(model_path.parent.parent.parent)), record


def _run_backbones(model_path: Path) -> Backbones:
    """The backbones of the run a card-less model lies in (``RUN_DIR/winners/<rank>-<id>/``), else the built-ins."""
    run_dir = model_path.parent.parent.parent
    if not (model_path.parent / CARD_FILE).is_file() and RunLayout(run_dir).config.is_file():
        return load_config(run_dir).backbone_specs
    return BUILT_IN


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
    """`iter_predictions` as a list."""
    return list(iter_predictions(source, image_paths, gradcam_dir, target_class, layer))


def iter_predictions(source, image_paths, gradcam_dir=None, target_class: str | None = None,
                     layer: str | None = None):
    """Class probabilities for each image, yielded as each is done; unreadable images get an error entry.

    Args:
        source: A run directory or a ``.keras`` file (see `load_model`).
        image_paths: Image files (PNG, JPEG, DICOM).
        gradcam_dir: If given, writes a Grad-CAM overlay per image there.
        target_class: Class the heatmaps explain; default each image's most probable class.
        layer: Grad-CAM layer; default the backbone's from the registry.

    Yields:
        Per image, in order: ``{"path", "probabilities": {class: p}, "decision", ...}`` or
        ``{"path", "error"}``. ``decision`` is what the model card prescribes: the operating
        point's rule where there is one (``decided_by`` says which), else the most probable
        class (also in ``argmax``); for findings, the list of findings called at their
        thresholds (each finding's figures in ``findings``). ``gradcam``: the overlay's path.
    """
    model, names = load_model(source)
    if target_class is not None and target_class not in names:
        raise UserError(f"Unknown class {target_class!r}; the model's classes are {', '.join(names)}.")
    size = model.inputs[0].shape[1]
    path = _model_path(source)
    task, record = _task_and_record(path)
    rule = task.decision_rule(record)
    if gradcam_dir is not None and model.name == ENSEMBLE_NAME and layer is None:
        raise UserError("The model is an ensemble; Grad-CAM explains one model: pass one member's "
                        "model.keras (RUN_DIR/winners/1-*/model.keras), or --layer.")
    explainer = None
    used_names: set[str] = set()
    for index, image_path in enumerate(map(str, image_paths)):
        try:
            image = _read(image_path, size)
        except (DecodeFailure, OSError) as error:
            yield {"path": image_path, "error": str(error) or type(error).__name__}
            continue
        batch = image[None]
        row = np.asarray(keras.ops.convert_to_numpy(model(batch, training=False)))[0]
        entry = {"path": image_path, "probabilities": {name: float(p) for name, p in zip(names, row)}}
        entry.update(task.decide(row, names, rule))
        if gradcam_dir is not None:
            explainer = explainer or gradcam.gradcam_model(model, layer or gradcam.default_layer(model, _run_backbones(path)))
            explained = names.index(target_class) if target_class else int(row.argmax())
            heatmap = gradcam.heatmaps(explainer, batch, explained)[0]
            name = f"{Path(image_path).stem}-gradcam.png"
            name = name if name not in used_names else f"{index}-{name}"  # two inputs with one file name
            used_names.add(name)
            entry["gradcam"] = str(gradcam.save_overlay(image, heatmap, Path(gradcam_dir) / name))
        yield entry


def _read(image_path: str, size: int) -> np.ndarray:
    """One image as the model takes it, (size, size, 1) uint8; a missing file said in words."""
    if not Path(image_path).exists():
        raise DecodeFailure(f"no such file: {image_path}")
    if Path(image_path).is_dir():
        raise DecodeFailure(f"{image_path} is a folder, not an image file")
    return decode_image(image_path, size)[..., None]
