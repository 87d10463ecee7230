"""``--time-budget``'s driver: the job's clock, which calibrates, plans, watches the search and revises the plan at each stage boundary."""

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
from cxr_tuner.search.engine.task import task_of
from cxr_tuner.search.tuning.budget.hyperband import TRIAL_BOOKKEEPING
from cxr_tuner.search.tuning.budget.plan import (AIM, EXTRA_SEEDS, TAIL_STAGES, Calibration, Plan, plan, retrain_cost,
                                                 retrain_plan, tail_cost)
from cxr_tuner.search.tuning.budget.tail import TailWork

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
    """The job's clock and plan for ``--time-budget`` (see the package's docstring).

    The plan is made after the data stage and the extraction and revised at each later
    stage boundary with the time left; each boundary's figures and decision are kept in
    ``plan.json`` (``boundaries``).

    Args:
        seconds: The budget.
        started: ``time.monotonic()`` when the job began (the process's start, or the command's).
        from_: Where the retrain starts (``--retrain-from``), which its price follows.
        externals: ``--external`` sets, which the evaluation scores too.
    """

    def __init__(self, seconds: float, started: float | None = None, retrain: bool = True,
                 clock: Callable[[], float] = time.monotonic, from_: str = "scratch", externals=()):
        self.seconds = seconds
        self.retrain = retrain
        self.clock = clock
        self.started = clock() if started is None else started
        self.from_, self.externals = from_, tuple(externals)
        self.plan: Plan | None = None
        self.calibration: Calibration | None = None
        self.deadline: Deadline | None = None
        self.work: TailWork | None = None
        self.tail: tuple[float, dict] | None = None
        self.record: dict = {}

    def elapsed(self) -> float:
        return self.clock() - self.started

    def plan_search(self, config, hypermodel, cache, log: Callable[[str], None] = print):
        """Calibrates, plans, prints the plan and saves ``plan.json``; returns the config with its ``max_epochs``.

        A resumed search (a saved oracle) keeps its Hyperband: only the retrain is planned.
        """
        layout = config.layout
        self.calibration = dataclasses.replace(calibrate(hypermodel, cache, config, log), tail=_measured_tail(layout))
        self.work = _tail_work(config, hypermodel.datasets.data, self.externals)
        saved_epochs = _saved_max_epochs(layout)
        self.plan = plan(self.seconds, self.elapsed(), self.calibration,
                         saved_epochs or config.max_epochs, config.factor, fixed_max_epochs=bool(saved_epochs),
                         top_k=config.retrain_choices["top_k"], seeds=config.retrain_choices["seeds"],
                         retrain=self.retrain, from_=self.from_, work=self.work)
        for line in self.plan.lines(self.calibration):
            log(line)
        self.record = {**self.plan.record(self.calibration), "resumed": bool(saved_epochs),
                       "work": dataclasses.asdict(self.work), "boundaries": [], SPLIT_STAMP: layout.split_digest()}
        self._boundary(config, "data and extraction", "planned the search, the retrain and the stages after it",
                       predicted_finish=self.plan.finish, search_deadline=self.plan.search_deadline)
        return config.replace(max_epochs=self.plan.max_epochs)

    def watch(self, tuner) -> None:
        """Gives the tuner's oracle the search's deadline (no trial starts after it, nor one that would end after it)."""
        calibration = self.calibration
        self.deadline = Deadline(self.started + self.plan.search_deadline,
                                 lambda epochs: calibration.overhead + TRIAL_BOOKKEEPING + epochs * calibration.epoch,
                                 self.clock)
        tuner.oracle.deadline = self.deadline  # a DeadlineHyperbandOracle (search.tuning.tuner.make_tuner)

    def retrain_options(self, config, best: dict, log: Callable[[str], None] = print) -> dict:
        """The retrain for what is left of the budget: ``top_k``, ``seeds``, ``choose_variant``, ``max_epochs``
        and ``stop_at``, the moment its fits must end by for the stages after it to end within the budget.

        At most as many winners as the search found configurations; up to ``EXTRA_SEEDS`` more seeds
        per winner than the flags ask while the deadline leaves time for them (``extra_seeds``).
        """
        found = len(best.get("top") or [])
        top_k = max(1, min(config.retrain_choices["top_k"], found))
        remaining = self.seconds * AIM - self.elapsed()
        chosen = retrain_plan(remaining, self.calibration, config.max_epochs, top_k, config.retrain_choices["seeds"],
                              self.from_, self.plan.tail)
        stopped = bool(self.deadline and self.deadline.stopped)
        cost = retrain_cost(chosen, self.calibration, self.from_)
        asked = config.retrain_choices["top_k"]
        fewer = f" (of {asked} asked: the search found {found} configuration{'s' * (found != 1)})" if found < asked else ""
        log(f"time budget: search {'stopped at its deadline' if stopped else 'done'} after {best['trials']} trials "
            f"(planned {self.plan.trials}), {self.elapsed():.0f} s spent; retrain {chosen.text(fewer)} ~{cost:.0f} s "
            f"of the {max(0.0, remaining - self.plan.tail):.0f} s left before the stages after it")
        self.record.update(search_stopped=stopped, trials_run=best["trials"], search_ended=self.elapsed(),
                           retrain_chosen=dataclasses.asdict(chosen))
        # Priced again for the winners the retrain makes (the final model loads each).
        self.tail = tail_cost(self.calibration, dataclasses.replace(self.work, winners=chosen.top_k))
        stop_at = self.seconds * AIM - self.tail[0]
        self._boundary(config, "search", f"retrain {chosen.text(fewer)}, then up to {EXTRA_SEEDS} more seeds "
                       "per winner while its deadline leaves time", retrain_seconds=cost,
                       retrain_deadline=stop_at, tail=self.tail[0], tail_parts=self.tail[1])
        return {"top_k": chosen.top_k, "seeds": chosen.seeds, "choose_variant": chosen.variants,
                "max_epochs": chosen.epochs, "stop_at": self.started + stop_at, "extra_seeds": EXTRA_SEEDS}

    def after_retrain(self, config, log: Callable[[str], None] = print) -> None:
        """Compares the time left with the stages after the retrain (their price), and records it."""
        left = self.seconds - self.elapsed()
        tail = self.tail[0] if self.tail else self.plan.tail
        late = self.elapsed() + tail - self.seconds * AIM
        verdict = (f"{late:.0f} s behind the plan: every stage after it still runs (each makes what was asked)"
                   if late > 0 else f"on time ({-late:.0f} s ahead of the plan)")
        log(f"time budget: retrain done, {self.elapsed():.0f} s spent, {max(0.0, left):.0f} s left; final model, "
            f"evaluate, export and exit ~{tail:.0f} s; {verdict}")
        self._boundary(config, "retrain", verdict, left=left)

    def finish(self, config, log: Callable[[str], None] = print) -> None:
        """Records and prints the job's wall time against the budget, and what the stages after the retrain took."""
        spent = self.elapsed()
        took = {stage: timing.stages(config.layout).get(stage, {}).get("seconds") for stage in TAIL_STAGES}
        self.record.update(finished=spent, within_budget=spent <= self.seconds, share_used=spent / self.seconds,
                           tail_took=took)
        files.write_json(config.layout.plan, self.record)
        log(f"time budget {duration_text(self.seconds)}: the job took {spent:.0f} s, {spent / self.seconds:.0%} "
            f"of the budget ({'within' if spent <= self.seconds else 'over'} it; plan.json)")

    def _boundary(self, config, stage: str, decided: str, **figures) -> None:
        """One stage boundary's time and decision into ``plan.json`` (written whole)."""
        self.record["boundaries"].append({"after": stage, "elapsed": self.elapsed(), "decided": decided, **figures})
        files.write_json(config.layout.plan, self.record)


def _tail_work(config, data, externals) -> TailWork:
    """The films the stages after the retrain go through: the test split, the probe's training films, each external set."""
    task = task_of(config)
    sets = tuple(len(getattr(found, "examples", found))
                 for found in (task.check_external(config, path, config.class_names) for path in externals))
    return TailWork(test=len(data.indices("test")), train=len(data.indices("train")), external=sets,
                    winners=config.retrain_choices["top_k"])


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
