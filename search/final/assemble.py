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

from cxr_tuner.data import files
from cxr_tuner.data.errors import UserError
from cxr_tuner.hypermodels.cutting import cut_layer, is_cacheable
from cxr_tuner.hypermodels.ensemble import build_ensemble
from cxr_tuner.hypermodels.registry import get_backbone
from cxr_tuner.search.engine import dataset, timing
from cxr_tuner.search.engine.text import number_text
from cxr_tuner.search.engine.config import RunConfig
from cxr_tuner.search.evaluation import calibration, operating_point
from cxr_tuner.search.engine.layout import (SPLIT_STAMP, WINNER_HISTORY, WINNER_HYPERPARAMETERS, WINNER_MODEL,
                           WINNER_OUT_OF_FOLD, WINNER_VALIDATION, RunLayout)
from cxr_tuner.search.engine.lock import run_lock
from cxr_tuner.search.final.refit import refit_members

FITTED_ON_FOLDS = "out-of-fold predictions on train+val (--folds), never the test split"


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
        from cxr_tuner.search.evaluation import multilabel

        chosen_point = multilabel.parse_points(_point_texts(point), config.class_names)
    else:
        chosen_point = operating_point.parse(point, config.class_names)  # before any work: bad input fails fast
    rows = data.indices(dataset.FIT if config.folds else "val")
    y_val = data.labels[rows]
    groups = dataset.leak_groups([data.examples[i] for i in rows], data.images[rows])  # calibration checks' folds
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
                                  refit, clock, summary, groups)
    decision = calibration.choose_temperature(y_val, raw, seed=config.seed, groups=groups)
    temperature = decision["temperature"]
    single = decision if k == 1 else calibration.choose_temperature(y_val, probs[0], seed=config.seed, groups=groups)
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
                       refit, clock, summary, groups) -> dict:
    """The final model of a multi-label run: per-finding temperatures and thresholds, chosen on validation."""
    from cxr_tuner.search.evaluation import multilabel

    layout, rows = config.layout, data.indices(dataset.FIT if config.folds else "val")
    y_val, raw = data.labels[rows], np.mean(probs[:k], axis=0)
    # Judged by held-out cross-entropy: measured as low a test ECE as judging by ECE, or lower (docs/multilabel.md).
    decision = multilabel.choose_temperatures(y_val, raw, seed=config.seed, names=config.class_names, criterion="nll",
                                              groups=groups)
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
