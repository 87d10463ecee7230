"""Export the best winner as .keras, SavedModel and TFLite, with a model card.

Every format takes raw uint8 grayscale images of the model's size, shape
``(batch, S, S, 1)``: resizing is the caller's job (``data.images.decode_image``
does it), the backbone's own preprocessing is inside the model. The SavedModel's
``serving_default`` signature (what TF Serving calls) takes ``image`` and returns
the softmax probabilities, in the class order of the model card.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import keras
import keras_tuner
import numpy as np
import tensorflow as tf

from cxr_tuner.data import files
from cxr_tuner.data.errors import UserError
from cxr_tuner.hypermodels import precision, preprocess
from cxr_tuner.search.engine import console, dataset, timing
from cxr_tuner.search.evaluation import gradcam, html_report
from cxr_tuner.search.engine.config import RunConfig
from cxr_tuner.search.engine.task import task_named, task_of
from cxr_tuner.hypermodels.ensemble import ENSEMBLE_NAME, for_export
from cxr_tuner.search.final.assemble import final_card
from cxr_tuner.search.tuning.hparams import searched_values
from cxr_tuner.search.engine.lock import run_lock
from cxr_tuner.search.engine.layout import EXPORT_FORMATS, SPLIT_STAMP, WINNER_HYPERPARAMETERS, WINNER_MODEL, RunLayout

FORMATS = EXPORT_FORMATS
FILES = {"keras": "model.keras", "savedmodel": "saved_model", "tflite": "model.tflite"}
CARD_FILE = "model_card.json"  # beside the exported files, wherever --out puts them
AGREEMENT_IMAGES = 64  # test films every exported format is checked on against the model in memory


def export_model(config: RunConfig, formats=FORMATS, out=None, log: Callable[[str], None] = print) -> dict:
    """Writes the rank-1 winner in ``formats`` into ``out`` (default ``RUN_DIR/export``).

    Returns:
        The model card, also written as ``model_card.json``.
    """
    with run_lock(config.run_dir, "export", log):
        started = time.perf_counter()
        card = _export(config, formats, out, log)
        if out is None:
            timing.record(config.layout, "export", time.perf_counter() - started, _test_pass(config.layout))
        return card


def _test_pass(layout: RunLayout) -> dict | None:
    """Export's floor: evaluate's forward pass over the test films (the whole floor of a run evaluated before
    the stress test's passes joined it)."""
    floor = timing.stages(layout).get("evaluate", {}).get("floor") or {}
    return floor.get("test_pass", floor) or None


def _export(config: RunConfig, formats, out, log) -> dict:
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise UserError(f"Unknown export format(s) {', '.join(unknown) or '(none given)'}; "
                        f"choose from {', '.join(FORMATS)}.")
    out = Path(out or config.layout.export)
    out.mkdir(parents=True, exist_ok=True)
    winner = config.layout.final_model()  # the calibrated (ensemble) model when assembled
    # compile=False: shipped for inference; the winner's optimizer (saved unbuilt) is not restored or shipped.
    trained = for_export(keras.saving.load_model(winner / WINNER_MODEL, compile=False))
    # Shipped in float32 whatever it trained in: every format and runtime computes it, TFLite included.
    model = precision.as_float32(trained)
    # The card says the files beside it are whole and current: gone until they are.
    (out / CARD_FILE).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".staging-") as staging, ThreadPoolExecutor(1) as pool:
        staging = Path(staging)
        written = _write_formats(model, formats, staging, staging / ".scratch", log, pool)
        written = {name: path for name, path in written.items() if name in formats}
        images = _test_images(config)
        log(f"export: checking {', '.join(written)} against the model on {len(images)} test images")
        written, agreement = _agreement(model, written, images)
        card = model_card(config, winner, model, written, staging)
        card["agreement"] = {"images": f"{len(images)} films of the test split, evenly spaced",
                             "max_abs_probability_difference": agreement}
        card["precision"] = _precision_card(trained, model, images)
        card.update(final_card(config.layout, winner))
        for path in written.values():  # each file or folder whole, then the card
            target = out / path.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(path, target)
    files.write_json(out / CARD_FILE, card)
    log(f"exported {', '.join(written)} to {out}")
    if out == config.layout.export and (config.layout.report / "report.md").is_file():
        html_report.write_report_html(config.layout.report, card)  # the report shows the card of what was shipped
    return card


def _write_formats(model: keras.Model, formats, out: Path, scratch: Path, log=lambda line: None, pool=None) -> dict:
    """Writes each format; TFLite converts from a SavedModel, a scratch one if not asked for.

    With a thread ``pool`` the TFLite conversion runs there (its entry a future of the path), beside what
    the caller does next: checking the other formats.
    """
    written = {}
    if "keras" in formats:
        log(f"export: {FILES['keras']}")
        model.save(out / FILES["keras"])  # its check is loading it in safe mode (`_agreement`)
        written["keras"] = out / FILES["keras"]
    if "savedmodel" in formats or "tflite" in formats:
        log("export: SavedModel" + ("" if "savedmodel" in formats else " (scratch, for TFLite)"))
        saved = out / FILES["savedmodel"] if "savedmodel" in formats else scratch / "saved_model"
        model.export(str(saved), format="tf_saved_model", verbose=False)
        written["savedmodel"] = saved
    if "tflite" in formats:
        log(f"export: {FILES['tflite']} (float32)")
        convert = lambda: _write_tflite(written["savedmodel"], out / FILES["tflite"])
        written["tflite"] = pool.submit(convert) if pool is not None else convert()
    return written


def _test_images(config: RunConfig) -> np.ndarray:
    """Up to ``AGREEMENT_IMAGES`` test films, evenly spaced: a format that converted wrongly
    answers differently on any of them, and each check is a forward pass of its own."""
    # config.json always saves overwrite=False, so this reads the split the search saved.
    run_data = dataset.prepare(config, progress=False)
    rows = run_data.indices("test")
    if len(rows) > AGREEMENT_IMAGES:
        rows = rows[np.linspace(0, len(rows) - 1, AGREEMENT_IMAGES).round().astype(int)]
    return np.asarray(run_data.images[rows])


def _agreement(model: keras.Model, written: dict, images: np.ndarray) -> tuple[dict, dict]:
    """Each written file's path (a conversion still running is waited for when its turn comes) and its
    largest absolute probability difference to the model in memory. Loading the .keras file here, in
    safe mode, is its check: it fails here, not in a user's hands."""
    reference = _in_batches(lambda batch: model(batch, training=False), images)
    paths, agreement = {}, {}
    for name, path in written.items():
        paths[name] = path = path.result() if isinstance(path, Future) else path
        agreement[name] = float(np.abs(predict_exported(path, images) - reference).max())
    return paths, agreement


def _precision_card(trained: keras.Model, shipped: keras.Model, images: np.ndarray) -> dict:
    """What the model trained in, what it ships in, and how far the two answer apart on ``images``."""
    card = {"trained": precision.policy_of(trained), "exported": precision.policy_of(shipped)}
    if shipped is not trained:
        # Rounding to bfloat16's 8 significant bits (float16's 11) in every layer, not a model change.
        before = _in_batches(lambda batch: trained(batch, training=False), images)
        after = _in_batches(lambda batch: shipped(batch, training=False), images)
        card["max_abs_probability_difference_to_trained"] = float(np.abs(after - before).max())
        card["same_predicted_class"] = float((after.argmax(1) == before.argmax(1)).mean())
    return card


def _write_tflite(saved_model: Path, path: Path) -> Path:
    # float32 on purpose: no quantisation, so the file answers like the model.
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    with console.quiet_native():  # the converter's MLIR notices
        path.write_bytes(converter.convert())
    return path


def predict_exported(path, images: np.ndarray) -> np.ndarray:
    """Probabilities from an exported file (.keras, SavedModel folder or .tflite)."""
    path = Path(path)
    if path.suffix == ".keras":
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
        return _in_batches(lambda batch: model(batch, training=False), images)
    if path.suffix == ".tflite":
        return _predict_tflite(path, images)
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    return _in_batches(lambda batch: next(iter(serve(tf.constant(batch)).values())), images)


def _in_batches(predict, images: np.ndarray, size: int = 64) -> np.ndarray:
    # Direct calls, not Model.predict: predict retraces (and warns) for every new model.
    return np.concatenate([keras.ops.convert_to_numpy(predict(images[i:i + size]))
                           for i in range(0, len(images), size)])


def _predict_tflite(path: Path, images: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings(), console.quiet_native():  # its LiteRT notice, its XNNPACK line
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(path))
        source = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(source["index"], images.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(source["index"], images.astype(source["dtype"]))
        interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def model_card(config: RunConfig, winner: Path, model: keras.Model, written: dict, out: Path) -> dict:
    """What a user of the exported files needs to know, and how to check they are the ones."""
    size = config.image_size
    return {
        "task": config.task,
        "class_names": list(config.class_names),
        "input": {"name": model.inputs[0].name, "shape": [None, size, size, 1], "dtype": "uint8",
                  "meaning": f"grayscale X-ray resized to {size}x{size}, values 0-255"},
        "output": {"name": "predictions", "shape": [None, len(config.class_names)],
                   "meaning": task_of(config).output_meaning()},
        "preprocessing": {"inside_model": preprocess.mode_of(model),
                          "caller": "decode to 8-bit grayscale and resize to the input size"},
        "loading": {"keras": "keras.saving.load_model(path, safe_mode=True); built-in Keras layers only, "
                             "no import of this project needed",
                    "savedmodel": "tf.saved_model.load(path).signatures['serving_default'](image=uint8 batch)",
                    "tflite": "tf.lite.Interpreter (or ai_edge_litert); float32, uint8 input"},
        "gradcam_layer": gradcam.default_layer(model, config.backbone_specs) if model.name != ENSEMBLE_NAME else None,
        "hyperparameters": searched_values(json.loads((winner / WINNER_HYPERPARAMETERS).read_text())["values"]),
        "winner": winner.name,
        "metrics": _headline_metrics(config.layout),
        SPLIT_STAMP: config.layout.split_digest(),
        "files": {name: _hashes(path, out) for name, path in written.items()},
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__,
                     "keras_tuner": keras_tuner.__version__},
    }


def _headline_metrics(layout: RunLayout) -> dict | None:
    """The test figures of the current split's evaluation, if it has run."""
    if not layout.metrics.is_file():
        return None
    metrics = layout.read_current(layout.metrics, f"run `cxr-tuner evaluate {layout.root}`")
    return task_named(metrics.get("task")).headline_metrics(metrics)


def _hashes(path: Path, out: Path) -> dict:
    found = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {p.relative_to(out).as_posix(): files.sha256_file(p) for p in found}
