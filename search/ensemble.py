"""The final model: the retrained winners averaged, calibrated, with a clinical operating point.

Runs after retrain and reads only the validation split (with ``--folds``, where the
winners trained on validation, their out-of-fold predictions on train+val): it chooses how many of the
ranked winners to average (``ensemble``; by default the count with the lowest
class-weighted validation loss), fits the temperature on the validation
probabilities of that average (applied only where cross-fitting on them says it
lowers the ECE; else T = 1), and chooses the operating point's threshold on
the calibrated validation probabilities (a default one that calls too many of the
other films positive is refused). It writes ``winners/final/``: one Keras
model on the same uint8 input (members that share a frozen backbone run it once,
up to the deepest cut they all leave frozen), and ``final.json`` saying what it is.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from data import files
from data.errors import UserError
from hypermodels.cutting import cut_layer, is_cacheable
from hypermodels.layers import FindingTemperature, TemperatureScaling
from hypermodels.registry import file_safe, get_backbone
from search import dataset, timing
from search.console import number_text
from search.config import RunConfig
from search.evaluation import calibration, operating_point
from search.layout import (SPLIT_STAMP, WINNER_HISTORY, WINNER_HYPERPARAMETERS, WINNER_MODEL,
                           WINNER_OUT_OF_FOLD, WINNER_VALIDATION, RunLayout)
from search.lock import run_lock
from search.refit import refit_members

CALIBRATION_LAYER = "calibration"
FITTED_ON_FOLDS = "out-of-fold predictions on train+val (--folds), never the test split"
ENSEMBLE_NAME = "cxr_ensemble"
ENSEMBLE_MEAN = "ensemble_mean"  # the layer averaging the members' probabilities, in member order


def _calibration(temperature):
    """The calibration layer: one softmax temperature, or a list of per-finding sigmoid temperatures."""
    if np.ndim(temperature):
        return FindingTemperature(temperature, name=CALIBRATION_LAYER)
    return TemperatureScaling(temperature, name=CALIBRATION_LAYER)


def build_ensemble(members: list[keras.Model], frozen: list[tuple[str, int | None]],
                   temperature=1.0) -> keras.Model:
    """One model averaging ``members``' probabilities, then ``TemperatureScaling(temperature)``.

    A list of temperatures (findings) calibrates each sigmoid output with its own.

    Args:
        members: Whole image models of the run (same uint8 input).
        frozen: Per member, ``(backbone, unfreeze depth)``; depth None when nothing of
            the backbone is frozen (trained from scratch), which then runs whole.
        temperature: Applied to the average; 1.0 leaves it as it is.
    """
    if len(members) == 1:  # stays flat, so Grad-CAM and the registry's layer names still apply
        member = members[0]
        return keras.Model(member.input, _calibration(temperature)(member.output), name=member.name)
    image = keras.Input(members[0].inputs[0].shape[1:], dtype=members[0].inputs[0].dtype, name="image")
    outputs, groups = [], {}
    for i, (member, (backbone, depth)) in enumerate(zip(members, frozen)):
        if depth is None:
            outputs.append(_renamed(member, f"member_{i + 1}")(image))
        else:
            groups.setdefault(backbone, []).append(i)
    for backbone, indices in groups.items():
        # The member that unfreezes most decides the deepest cut below which all are frozen alike.
        cut = cut_layer(get_backbone(backbone), max(frozen[i][1] for i in indices))
        first = members[indices[0]]
        shared = keras.Model(first.input, first.get_layer(cut).output, name=f"frozen_{file_safe(backbone)}")
        shared.trainable = False
        features = shared(image)
        outputs += [_above(members[i], cut, f"member_{i + 1}")(features) for i in indices]
    mean = keras.layers.Average(name=ENSEMBLE_MEAN)(outputs)
    return keras.Model(image, _calibration(temperature)(mean), name=ENSEMBLE_NAME)


def for_export(model: keras.Model) -> keras.Model:
    """The final model as shipped: a single member's temperature folded into its softmax layer.

    ``softmax(z) -> softmax(z / T)`` is dividing the last Dense layer's kernel and bias
    by ``T``, so the shipped model holds built-in Keras layers only and loads without
    this project. An ensemble of several members keeps its ``TemperatureScaling``.
    """
    if CALIBRATION_LAYER not in [layer.name for layer in model.layers] or \
            "predictions" not in [layer.name for layer in model.layers]:
        return model
    calibration = model.get_layer(CALIBRATION_LAYER)
    # sigmoid(z) -> sigmoid(z / T_l) is the same division, column by column.
    temperature = np.asarray(getattr(calibration, "temperatures", None) or calibration.temperature)
    flat = keras.Model(model.input, model.get_layer("predictions").output, name=model.name)
    folded = keras.models.clone_model(flat)
    folded.set_weights(flat.get_weights())
    dense = folded.get_layer("predictions")
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel / temperature, bias / temperature])
    return folded


def _above(member: keras.Model, cut: str, name: str) -> keras.Model:
    """The part of ``member`` above layer ``cut``, as a model of its own holding the member's values."""
    blocks = keras.Model(member.get_layer(cut).output, member.output)
    inputs = keras.Input(blocks.inputs[0].shape[1:], name=f"{name}_{cut}")
    copy = keras.models.clone_model(blocks, input_tensors=inputs)
    for layer in copy.layers:
        if layer.weights:
            layer.set_weights(member.get_layer(layer.name).get_weights())
    return keras.Model(copy.input, copy.output, name=name)


def _renamed(member: keras.Model, name: str) -> keras.Model:
    return keras.Model(member.input, member.output, name=name)


def predict(model: keras.Model, images: np.ndarray, size: int = 64) -> np.ndarray:
    """Probabilities in batches, by direct calls (``Model.predict`` retraces per new model)."""
    return np.concatenate([keras.ops.convert_to_numpy(model(np.asarray(images[i:i + size]), training=False))
                           for i in range(0, len(images), size)]).astype(np.float64)


def assemble(config: RunConfig, ensemble: int | None = None, point: str | None = None,
             log: Callable[[str], None] = print, refit: bool = False) -> dict:
    """Builds ``winners/final/`` from the retrained winners, on the validation split only.

    Args:
        ensemble: How many of the ranked winners to average; None chooses the count
            (1 up to all retrained) with the lowest class-weighted validation loss.
        point: ``CLASS:sensitivity=X`` / ``CLASS:specificity=X``, ``off``, or None for
            the default (COVID at sensitivity 0.95 when there is such a class).
        refit: Train the chosen members again on train+val (:mod:`search.refit`) after
            every choice is made on validation; with ``--folds`` they already are.

    Returns:
        The content of ``final.json``.
    """
    with run_lock(config.run_dir, "assemble", log):
        started, clock = time.perf_counter(), timing.EpochClock()
        record = _assemble(config, ensemble, point, log, refit and not config.folds, clock)
        timing.record(config.layout, "final model", time.perf_counter() - started, clock.floor(),
                      note="loads the winners, builds, saves and reloads one model (no refit: no training)")
        return record


def _assemble(config: RunConfig, ensemble: int | None, point: str | None, log, refit: bool,
              clock: timing.EpochClock) -> dict:
    layout = config.layout
    winners_dir = layout.winners
    layout.best_winner()  # a clear error when there are no (current) winners
    summary = layout.read_current(layout.winners_summary, f"run `cxr-tuner retrain {config.run_dir}`")
    winners = summary["winners"]
    if ensemble is not None and ensemble > len(winners):
        raise UserError(f"--ensemble {ensemble} needs {ensemble} retrained winners, the run has {len(winners)}; "
                        f"retrain with `cxr-tuner retrain {config.run_dir} --top-k {ensemble}`.")
    data = dataset.prepare(config, progress=False)
    config = data.config
    if config.multilabel:
        from search.evaluation import multilabel

        chosen_point = multilabel.parse_points(_point_texts(point), config.class_names)
    else:
        chosen_point = operating_point.parse(point, config.class_names)  # before any work: bad input fails fast
    rows = data.indices(dataset.FIT if config.folds else "val")
    y_val = data.labels[rows]
    members = [keras.saving.load_model(winners_dir / w["dir"] / WINNER_MODEL, compile=False) for w in winners]
    # The probabilities the retrain saved: on validation, or with --folds (the members trained on
    # validation too) out of fold.
    probs = [_saved_probabilities(config, winners_dir / w["dir"], rows) for w in winners]
    losses = [data.objective_value(rows, np.mean(probs[:k], axis=0)) for k in range(1, len(probs) + 1)]
    k = ensemble or int(np.argmin(losses)) + 1
    basis = "out-of-fold" if config.folds else "validation"
    log(f"ensemble ({basis} " + ", ".join(f"top {i + 1}: weighted loss {v:.4f}" for i, v in enumerate(losses))
        + f"): averaging the top {k}" + ("" if ensemble else f" (lowest {basis} loss)"))
    raw = np.mean(probs[:k], axis=0)
    if config.multilabel:
        return _assemble_findings(config, data, winners, members, probs, k, losses, chosen_point, basis, log,
                                  refit, clock, summary)
    decision = calibration.choose_temperature(y_val, raw, seed=config.seed)
    temperature = decision["temperature"]
    single = decision if k == 1 else calibration.choose_temperature(y_val, probs[0], seed=config.seed)
    frozen = [_frozen_part(config, winners_dir / w["dir"]) for w in winners[:k]]
    if refit:
        members[:k] = refit_members(data, winners[:k], summary["augment"], log, clock)
    model = build_ensemble(members[:k], frozen, temperature)
    calibrated = calibration.scale(raw, temperature)  # what the model's TemperatureScaling layer computes
    point, refused = operating_point.choose(chosen_point, config.class_names, y_val, calibrated, basis)
    record = {
        "kind": "ensemble" if k > 1 else "single",
        "members": [w["dir"] for w in winners[:k]], "ensemble_size": k,
        "validation_weighted_loss_by_size": losses,
        "shared_frozen_backbone": {b: cut_layer(get_backbone(b), max(d for bb, d in frozen if bb == b))
                                   for b, d in frozen if d is not None} if k > 1 else None,
        "temperature": temperature, "single_temperature": single["temperature"],
        "calibration_check": {**decision, "text": calibration.decision_text(decision, basis)},
        "calibration_validation": calibration.summary(y_val, raw, temperature),
        "operating_point": point, "operating_point_refused": refused,
        "fitted_on": FITTED_ON_FOLDS if config.folds else "validation split only", SPLIT_STAMP: layout.split_digest(),
        "refit": ({"on": "train+val", "epochs": {w["dir"]: w["best_epoch"] for w in winners[:k]},
                   "note": "ensemble size, temperature and threshold were chosen on the validation probabilities "
                           "of the members before their refit"} if refit else None),
    }
    _save(layout, winners[0]["dir"], model, record)
    log("temperature " + record["calibration_check"]["text"])
    if point:
        log(f"operating point {point['target_text']}: threshold {point['threshold']:.4f} on {point['class']} "
            f"probability ({basis} sensitivity {number_text(point['validation']['sensitivity'])}, "
            f"specificity {number_text(point['validation']['specificity'])}; {operating_point.cost_text(point)}); "
            + operating_point.guarantee_text(point))
        if point["warning"]:
            log(f"warning: operating point {point['target_text']}: {point['warning']}")
    if refused:
        log(operating_point.refused_text(refused))
    return record


def _point_texts(point: str | None) -> list[str] | None:
    """``--operating-point`` for findings: several ``LABEL:sensitivity=X``, comma-separated; None: the defaults."""
    return None if point is None else [part for part in point.split(",") if part.strip()]


def _assemble_findings(config: RunConfig, data, winners, members, probs, k, losses, chosen_point, basis, log,
                       refit, clock, summary) -> dict:
    """The final model of a multi-label run: per-finding temperatures and thresholds, chosen on validation."""
    from search.evaluation import multilabel

    layout, rows = config.layout, data.indices(dataset.FIT if config.folds else "val")
    y_val, raw = data.labels[rows], np.mean(probs[:k], axis=0)
    # Judged by held-out cross-entropy: measured as low a test ECE as judging by ECE, or lower (docs/multilabel.md).
    decision = multilabel.choose_temperatures(y_val, raw, seed=config.seed, names=config.class_names, criterion="nll")
    temperatures = [float(t) for t in decision["temperatures"]]
    frozen = [_frozen_part(config, layout.winners / w["dir"]) for w in winners[:k]]
    if refit:
        members[:k] = refit_members(data, winners[:k], summary["augment"], log, clock)
    model = build_ensemble(members[:k], frozen, temperatures)
    calibrated = multilabel.scale(raw, np.asarray(temperatures))  # what the model's FindingTemperature computes
    points = multilabel.choose_thresholds(y_val, calibrated, config.class_names, chosen_point)
    record = {
        "kind": "ensemble" if k > 1 else "single", "task": "multilabel",
        "members": [w["dir"] for w in winners[:k]], "ensemble_size": k,
        "validation_weighted_loss_by_size": losses,
        "shared_frozen_backbone": {b: cut_layer(get_backbone(b), max(d for bb, d in frozen if bb == b))
                                   for b, d in frozen if d is not None} if k > 1 else None,
        "temperature": temperatures, "calibration_check": _jsonable(decision),
        "operating_point": None, "operating_points": _jsonable(points), "operating_point_refused": None,
        "fitted_on": FITTED_ON_FOLDS if config.folds else "validation split only", SPLIT_STAMP: layout.split_digest(),
        "refit": ({"on": "train+val", "epochs": {w["dir"]: w["best_epoch"] for w in winners[:k]}}
                  if refit else None),
    }
    _save(layout, winners[0]["dir"], model, record)
    log(decision["text"])
    for name, chosen in points.items():
        seen = chosen.get("validation") or {}
        log(f"operating point {name}: threshold {chosen['threshold']:.4f} ({chosen['rule_text']}; {basis} sensitivity "
            f"{number_text(seen.get('sensitivity'))}, specificity {number_text(seen.get('specificity'))})")
    return record


def _jsonable(value):
    """NumPy scalars and arrays inside ``value`` as plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def final_card(layout: RunLayout, model_dir: Path) -> dict:
    """The model card's ``model`` and ``operating_point`` entries for the exported model in ``model_dir``."""
    record_file = layout.final_record
    if Path(model_dir) != layout.final:
        return {"model": {"kind": "single", "members": [Path(model_dir).name], "temperature": None,
                          "what": "the rank-1 retrained winner, uncalibrated"}, "operating_point": None}
    record = json.loads(record_file.read_text())
    if record.get("task") == "multilabel":
        return _findings_card(record)
    k = record["ensemble_size"]
    what = (f"the mean of the probabilities of the top {k} retrained winners ({', '.join(record['members'])})"
            if k > 1 else f"the rank-1 retrained winner ({record['members'][0]})")
    fitted = "out-of-fold predictions on train+val" if record.get("fitted_on") == FITTED_ON_FOLDS else "the validation split"
    check = record.get("calibration_check")
    if check is None or check["applied"]:  # records made before the check always applied their temperature
        what += f", temperature-scaled (T = {record['temperature']:.4f}, fitted on {fitted})"
    else:
        what += (f", not temperature-scaled (T = 1: the temperature fitted on {fitted}, "
                 f"{check['fitted_temperature']:.4f}, did not lower the ECE out of sample)")
    if record.get("refit"):
        what += "; each member refit on train+val for its best epoch count after every choice was made on validation"
    if record["shared_frozen_backbone"]:
        what += "; members share one frozen backbone up to " + ", ".join(
            f"{b}'s {cut}" for b, cut in record["shared_frozen_backbone"].items())
    model = {"kind": record["kind"], "members": record["members"], "temperature": record["temperature"],
             "temperature_applied": check is None or check["applied"], "what": what}
    if k > 1:
        model["gradcam"] = ("explain with a member: RUN_DIR/winners/" + record["members"][0] + "/model.keras")
    card = {"model": model, "operating_point": record["operating_point"]}
    if record.get("operating_point_refused"):
        card["operating_point_refused"] = record["operating_point_refused"]
    return card


def _findings_card(record: dict) -> dict:
    """`final_card` of a multi-label final model: its temperatures and each finding's threshold."""
    k = record["ensemble_size"]
    what = (f"the mean of the sigmoid outputs of the top {k} retrained winners ({', '.join(record['members'])})"
            if k > 1 else f"the rank-1 retrained winner ({record['members'][0]})")
    what += ", " + record["calibration_check"]["text"]
    model = {"kind": record["kind"], "members": record["members"], "temperature": record["temperature"], "what": what}
    if k > 1:
        model["gradcam"] = ("explain with a member: RUN_DIR/winners/" + record["members"][0] + "/model.keras")
    thresholds = {name: point["threshold"] for name, point in record["operating_points"].items()}
    return {"model": model, "operating_point": None, "operating_points": record["operating_points"],
            "thresholds": thresholds}


def _saved_probabilities(config: RunConfig, winner: Path, rows: np.ndarray) -> np.ndarray:
    """A winner's probabilities on ``rows`` as its retrain saved them: validation, or out of fold on train+val."""
    path = winner / (WINNER_OUT_OF_FOLD if config.folds else WINNER_VALIDATION)
    if not path.is_file():
        raise UserError(f"{path} is missing; run `cxr-tuner retrain {config.run_dir}`.")
    with np.load(path) as saved:
        if not np.array_equal(saved["rows"], rows):
            raise UserError(f"{path} holds other rows than the run's {'train+val' if config.folds else 'validation split'}; "
                            f"run `cxr-tuner retrain {config.run_dir}`.")
        return saved["probabilities"].astype(np.float64)


def weighted_loss(y, probs, weights) -> float:
    """The class-weighted cross-entropy sum(w·l)/sum(w) of probabilities ``probs`` for labels ``y``."""
    picked = np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)
    return float((weights * -np.log(picked)).sum() / weights.sum())


def _frozen_part(config: RunConfig, winner: Path) -> tuple[str, int | None]:
    values = json.loads((winner / WINNER_HYPERPARAMETERS).read_text())["values"]
    backbone = values["backbone"]
    return backbone, values.get("unfreeze_depth", 0) if is_cacheable(backbone, config.weights) else None


def _save(layout: RunLayout, best: str, model: keras.Model, record: dict) -> None:
    final = layout.final
    shutil.rmtree(final, ignore_errors=True)
    final.mkdir(parents=True)
    model.save(final / WINNER_MODEL)
    keras.saving.load_model(final / WINNER_MODEL, safe_mode=True, compile=False)  # fails here, not in a user's hands
    for name in (WINNER_HISTORY, WINNER_HYPERPARAMETERS):  # the rank-1 member's, for the report and card
        shutil.copy(layout.winners / best / name, final / name)
    files.write_json(layout.final_record, record)  # last: says the folder is whole
