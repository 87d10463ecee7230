"""``--time-budget``'s price of what follows the retrain: the final model, evaluation, export, the process's exit. Pure.

Priced from the calibration's figures of this machine and this run's films (a steady forward
pass of the dearest whole image model per film, a predict's first-call trace of it, the stress
test's re-rendering of a film in every family) times what each stage does with them, counted
from the stages' code; the few seconds that follow neither films nor the model (the report's
plots and pages) are this machine's, measured. docs/time-budget.md has the
figures these counts were checked against.
"""

from __future__ import annotations

import dataclasses

# Counted from the stages' code, checked against a profile of the final model, evaluate and export of
# the default cxr3-dev job (mobilenet_025 at 224 px, 286 test films, 3 winners; docs/time-budget.md).
STRESS_PASSES = 8
"""Forward passes per evaluated film in the stress test (one per `data.shift` family)."""
PROBE_PASSES = 2
"""Forward passes per test film in the chest-hidden probe (the chest hidden, the chest alone)."""
PROBE_TRAIN_FILMS = 600
"""Training films the probe's fresh head learns from, at most (`search.evaluation.probe.PROBE_TRAIN_IMAGES`)."""
GRADCAM_PASSES = 3.4
"""Grad-CAM of every test film's answer, in forward passes (a forward and a backward pass to the backbone's
last block): 5.1 s for 286 films at 5.2 ms a forward pass."""
EVALUATE_TRACES = 6
"""Models an evaluation loads or traces: final model, its member, the Grad-CAM model, the probe's, the stress test's."""
REPORT_SECONDS = 4.5
"""Plots, pages and bootstrap intervals of one report: this machine's, measured (4.7 s; they follow neither films
nor the model)."""
AGREEMENT_FILMS = 64
"""Test films export checks each format on, at most (`search.delivery.export.AGREEMENT_IMAGES`)."""
EXPORT_PASSES = 5
"""Forward passes per checked film in export: the model in memory, each written format, the precision check."""
EXPORT_TRACES = 20
"""Export's writing and reading back, in traces of the model: the SavedModel (3.6 s) and the TFLite conversion
(2.7 s) trace the whole graph, each format read back traces it again; 7.0 and 11.2 s in two runs at 0.35 s a trace.
(A save of the dearest model is no unit for it: its wide head's weights make it 0.5 s, a winner's 0.17 s.)"""
LOAD_TRACES = 2
"""Loading a winner, in traces (the final model loads every retrained winner: 0.68 s each)."""
ASSEMBLE_TRACES = 2
"""The final model's build, save and reload, in traces (0.9 s)."""
EXIT_SECONDS = 2.0
"""The interpreter's exit after the job's last line, freeing TensorFlow's and the run's objects: 1.3 s measured."""


@dataclasses.dataclass(frozen=True)
class TailWork:
    """What the stages after the retrain go through: films per set, the retrained winners the final model loads."""

    test: int
    train: int
    external: tuple[int, ...] = ()
    winners: int = 3


def tail_parts(calibration, work: TailWork) -> dict[str, float]:
    """Predicted seconds of each stage after the retrain (and of the process's exit), on ``calibration``'s figures."""
    forward, trace, render = calibration.forward, calibration.trace, calibration.render
    scored = forward * (1 + STRESS_PASSES) + render  # one film as filmed and in every stress family
    evaluate = (work.test * (scored + forward * (PROBE_PASSES + GRADCAM_PASSES))
                + min(work.train, PROBE_TRAIN_FILMS) * forward + EVALUATE_TRACES * trace + REPORT_SECONDS)
    evaluate += sum(films * (scored + forward) + 2 * trace + REPORT_SECONDS for films in work.external)
    checked = min(work.test, AGREEMENT_FILMS)
    return {"final model": (LOAD_TRACES * work.winners + ASSEMBLE_TRACES) * trace,
            "evaluate": evaluate,
            "export": checked * forward * EXPORT_PASSES + EXPORT_TRACES * trace,
            "exit": EXIT_SECONDS}
