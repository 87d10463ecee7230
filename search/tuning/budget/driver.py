"""``--time-budget``'s driver: the job's clock, which calibrates, plans, watches the search and re-plans the retrain."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Callable

from cxr_tuner.data import files
from cxr_tuner.data.errors import UserError
from cxr_tuner.search.engine import timing
from cxr_tuner.search.engine.layout import SPLIT_STAMP
from cxr_tuner.search.figures.text import duration_text
from cxr_tuner.search.tuning.budget.calibrate import calibrate
from cxr_tuner.search.tuning.budget.deadline import Deadline
from cxr_tuner.search.tuning.budget.plan import (MARGIN, TAIL_STAGES, TRIAL_BOOKKEEPING, Calibration, Plan, plan,
                                                 retrain_plan)

def check_plannable(config, retrain: bool = True, augment: bool = False, workers: int = 1, chief: str | None = None,
                    **_) -> None:
    """Refuses, in one line, what ``--time-budget`` cannot plan yet (nothing is written before)."""
    refused = [(config.tuner != "hyperband", f"--tuner {config.tuner} (it plans Hyperband)"),
               (workers > 1, "--workers (its calibration times trials in this process)"),
               (chief is not None, "--chief (its calibration times trials in this process)"),
               (config.folds is not None, "--folds (it does not price K models per trial)"),
               (retrain and augment, "--augment (it does not price training on images)")]
    for found, what in refused:
        if found:
            raise UserError(f"--time-budget cannot be combined with {what}; drop one of the two.")


class Budget:
    """The job's clock and plan for ``--time-budget`` (see the module's docstring).

    Args:
        seconds: The budget.
        started: ``time.monotonic()`` when the job began (the command's start).
    """

    def __init__(self, seconds: float, started: float | None = None, retrain: bool = True,
                 clock: Callable[[], float] = time.monotonic):
        self.seconds = seconds
        self.retrain = retrain
        self.clock = clock
        self.started = clock() if started is None else started
        self.plan: Plan | None = None
        self.calibration: Calibration | None = None
        self.deadline: Deadline | None = None
        self.record: dict = {}

    def elapsed(self) -> float:
        return self.clock() - self.started

    def plan_search(self, config, hypermodel, cache, log: Callable[[str], None] = print):
        """Calibrates, plans, prints the plan and saves ``plan.json``; returns the config with its ``max_epochs``.

        A resumed search (a saved oracle) keeps its Hyperband: only the retrain is planned.
        """
        layout = config.layout
        self.calibration = dataclasses.replace(calibrate(hypermodel, cache, config, log), tail=_measured_tail(layout))
        saved_epochs = _saved_max_epochs(layout)
        self.plan = plan(self.seconds, self.elapsed(), self.calibration,
                         saved_epochs or config.max_epochs, config.factor, fixed_max_epochs=bool(saved_epochs),
                         top_k=config.retrain_choices["top_k"], seeds=config.retrain_choices["seeds"],
                         retrain=self.retrain)
        for line in self.plan.lines(self.calibration):
            log(line)
        self.record = {**self.plan.record(self.calibration), "resumed": bool(saved_epochs),
                       SPLIT_STAMP: layout.split_digest()}
        files.write_json(layout.plan, self.record)
        return config.replace(max_epochs=self.plan.max_epochs)

    def watch(self, tuner) -> None:
        """Gives the tuner's oracle the search's deadline (no trial starts after it, nor one that would end after it)."""
        calibration = self.calibration
        self.deadline = Deadline(self.started + self.plan.search_deadline,
                                 lambda epochs: calibration.overhead + TRIAL_BOOKKEEPING + epochs * calibration.epoch,
                                 self.clock)
        tuner.oracle.deadline = self.deadline  # a DeadlineHyperbandOracle (search.tuning.tuner.make_tuner)

    def retrain_options(self, config, trials: int, log: Callable[[str], None] = print) -> dict:
        """The retrain's ``top_k``, ``choose_variant`` and ``max_epochs`` for what is left of the budget."""
        remaining = self.seconds * (1 - MARGIN) - self.elapsed()
        chosen = retrain_plan(remaining, self.calibration, config.max_epochs, config.retrain_choices["top_k"],
                              config.retrain_choices["seeds"])
        stopped = bool(self.deadline and self.deadline.stopped)
        log(f"time budget: search {'stopped at its deadline' if stopped else 'done'} after {trials} trials "
            f"(planned {self.plan.trials}), {self.elapsed():.0f} s spent; retrain {chosen.text()} "
            f"in the {max(0.0, remaining):.0f} s left before the margin")
        self.record.update(search_stopped=stopped, trials_run=trials, search_ended=self.elapsed(),
                           retrain_chosen=dataclasses.asdict(chosen))
        files.write_json(config.layout.plan, self.record)
        return {"top_k": chosen.top_k, "seeds": config.retrain_choices["seeds"], "choose_variant": chosen.variants,
                "max_epochs": chosen.epochs}

    def finish(self, config, log: Callable[[str], None] = print) -> None:
        """Records and prints the job's wall time against the budget."""
        spent = self.elapsed()
        self.record.update(finished=spent, within_budget=spent <= self.seconds)
        files.write_json(config.layout.plan, self.record)
        log(f"time budget {duration_text(self.seconds)}: the job took {spent:.0f} s "
            f"({'within' if spent <= self.seconds else 'over'} the budget; plan.json)")


def _measured_tail(layout) -> float | None:
    """Seconds of the final model, evaluation and export this run directory recorded for its split, if all three."""
    found = timing.stages(layout)
    if not all(stage in found for stage in TAIL_STAGES):
        return None
    return sum(float(found[stage]["seconds"]) for stage in TAIL_STAGES)


def _saved_max_epochs(layout) -> int | None:
    """A resumed search's Hyperband ``max_epochs``, from KerasTuner's saved oracle; None for a new search."""
    if not layout.oracle.is_file():
        return None
    try:
        return int(json.loads(layout.oracle.read_text())["max_epochs"])
    except (ValueError, KeyError, TypeError):
        return None
