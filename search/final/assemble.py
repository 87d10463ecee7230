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

from cxr_tuner.data import audit, files
from cxr_tuner.data.errors import UserError
from cxr_tuner.hypermodels.cutting import cut_layer, is_cacheable
from cxr_tuner.hypermodels.ensemble import build_ensemble
from cxr_tuner.search.engine import dataset, timing
from cxr_tuner.search.engine.config import RunConfig
from cxr_tuner.search.engine.layout import (SPLIT_STAMP, WINNER_HISTORY, WINNER_HYPERPARAMETERS, WINNER_MODEL,
                           WINNER_OUT_OF_FOLD, WINNER_VALIDATION, RunLayout)
from cxr_tuner.search.engine.lock import run_lock
from cxr_tuner.search.engine.task_base import FITTED_ON_FOLDS
from cxr_tuner.search.engine.task import task_named
from cxr_tuner.search.final.refit import refit_members



def assemble(config: RunConfig, ensemble: int | None = None, point: str | None = None,
             log: Callable[[str], None] = print, refit: bool = False) -> dict:
    """Builds ``winners/final/`` from the retrained winners, on the validation split only.

    Args:
        ensemble: How many of the ranked winners to average; None chooses the count
            (1 up to all retrained) with the lowest class-weighted validation loss.
        point: ``CLASS:sensitivity=X`` / ``CLASS:specificity=X``, ``off``, or None for
            the default (COVID at sensitivity 0.95 when there is such a class).
        refit: Train the chosen members again on train+val (:mod:`search.final.refit`) after
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
    config, task = data.config, data.task
    chosen_point = task.parse_points(point, config.class_names)  # before any work: bad input fails fast
    rows = data.indices(dataset.FIT if config.folds else "val")
    y_val = data.labels[rows]
    groups = audit.leak_groups([data.examples[i] for i in rows], data.images[rows])  # the calibration checks' folds
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
    # The rank-1 member's own temperature is the single best's, shown beside the ensemble's.
    chosen = task.calibrate(y_val, raw, raw if k == 1 else probs[0], config.class_names, chosen_point, config.seed,
                            basis, groups)
    frozen = [_frozen_part(config, winners_dir / w["dir"]) for w in winners[:k]]
    if refit:
        members[:k] = refit_members(data, winners[:k], summary["augment"], log, clock)
    model = build_ensemble(members[:k], frozen, chosen.temperature, specs=config.backbone_specs)
    record = {
        "kind": "ensemble" if k > 1 else "single",
        "members": [w["dir"] for w in winners[:k]], "ensemble_size": k,
        "validation_weighted_loss_by_size": losses,
        "shared_frozen_backbone": {b: cut_layer(config.backbone_specs.get(b), max(d for bb, d in frozen if bb == b))
                                   for b, d in frozen if d is not None} if k > 1 else None,
        **chosen.record,
        "fitted_on": FITTED_ON_FOLDS if config.folds else "validation split only", SPLIT_STAMP: layout.split_digest(),
        "refit": ({"on": "train+val", "epochs": {w["dir"]: w["best_epoch"] for w in winners[:k]},
                   "note": "ensemble size, temperature and threshold were chosen on the validation probabilities "
                           "of the members before their refit"} if refit else None),
    }
    _save(layout, winners[0]["dir"], model, record)
    for line in chosen.lines:
        log(line)
    return record


def final_card(layout: RunLayout, model_dir: Path) -> dict:
    """The model card's ``model`` and ``operating_point`` entries for the exported model in ``model_dir``."""
    record_file = layout.final_record
    if Path(model_dir) != layout.final:
        return {"model": {"kind": "single", "members": [Path(model_dir).name], "temperature": None,
                          "what": "the rank-1 retrained winner, uncalibrated"}, "operating_point": None}
    record = json.loads(record_file.read_text())
    return task_named(record.get("task")).final_card(record)


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
    return backbone, values.get("unfreeze_depth", 0) if is_cacheable(config.backbone_specs.get(backbone), config.weights) else None


def _save(layout: RunLayout, best: str, model: keras.Model, record: dict) -> None:
    final = layout.final
    shutil.rmtree(final, ignore_errors=True)
    final.mkdir(parents=True)
    model.save(final / WINNER_MODEL)
    keras.saving.load_model(final / WINNER_MODEL, safe_mode=True, compile=False)  # fails here, not in a user's hands
    for name in (WINNER_HISTORY, WINNER_HYPERPARAMETERS):  # the rank-1 member's, for the report and card
        shutil.copy(layout.winners / best / name, final / name)
    files.write_json(layout.final_record, record)  # last: says the folder is whole
