"""``--time-budget``'s price of what follows the retrain: the final model, evaluation, export, the process's exit. Pure.

Priced from the calibration's figures of this machine and this run's films (a steady forward
pass of the dearest whole image model per film, a predict's first-call trace of it, one save of
it, the stress test's re-rendering of a film in every family) times what each stage does with
them, counted from the stages' code and checked against six bench runs; the seconds that
follow neither passes nor the model (the report's plots and pages, figures per film) are this
machine's, measured. docs/time-budget.md has the
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
STRESS_RATE = 0.7
"""A stress pass's cost per film against the calibration's forward pass: the stress test predicts 128 films' 8
renderings (1,024 images) per call, a larger batch than the calibration's (6.6 s for 286 films at 3.9 ms)."""
GRADCAM_PASSES = 1.7
"""Grad-CAM of every test film's answer, in forward passes (a forward and a backward pass to the backbone's
last block, one traced function)."""
EVALUATE_TRACES = 6
"""Models an evaluation loads or traces: final model, its member, the Grad-CAM model, the probe's, the stress test's."""
REPORT_SECONDS = 4.5
"""Plots, pages and bootstrap intervals of one report: this machine's, measured (4.7 s; they follow neither films
nor the model)."""
FIGURES_PER_FILM = 0.005
"""Seconds per scored film beyond its passes: figures with bootstrap intervals as filmed, per stress family and
per source, gallery pictures."""
AGREEMENT_FILMS = 64
"""Test films export checks each format on, at most (`search.delivery.export.AGREEMENT_IMAGES`)."""
EXPORT_PASSES = 5
"""Forward passes per checked film in export: the model in memory, each written format, the precision check."""
EXPORT_SAVES = 12
"""Export's writing (.keras, the SavedModel, the TFLite conversion) and reading back, in saves of the dearest
model, the calibration's steadiest figure (0.50-0.57 s in six runs, where its trace ranged 0.32-1.0 s): export took
6.8-8.5 s in those runs."""
LOAD_SAVES = 0.5
"""Loading a retrained winner, in saves of the dearest model (the final model loads each)."""
ASSEMBLE_SAVES = 1.5
"""The final model's build, save and reload, in saves of the dearest model (0.9-1.8 s in six runs)."""
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
    forward, trace, keep, render = calibration.forward, calibration.trace, calibration.keep, calibration.render
    scored = forward * (1 + STRESS_PASSES * STRESS_RATE) + render  # one film as filmed and in every stress family
    scored += FIGURES_PER_FILM
    probe = (work.test * PROBE_PASSES + min(work.train, PROBE_TRAIN_FILMS)) * forward
    # The probe trains in a thread while the report draws its pictures: the longer of the two counts.
    evaluate = (work.test * (scored + forward * GRADCAM_PASSES) + max(probe, REPORT_SECONDS)
                + EVALUATE_TRACES * trace)
    evaluate += sum(films * (scored + forward) + 2 * trace + REPORT_SECONDS for films in work.external)
    checked = min(work.test, AGREEMENT_FILMS)
    return {"final model": (LOAD_SAVES * work.winners + ASSEMBLE_SAVES) * keep,
            "evaluate": evaluate,
            "export": checked * forward * EXPORT_PASSES + EXPORT_SAVES * keep,
            "exit": EXIT_SECONDS}
