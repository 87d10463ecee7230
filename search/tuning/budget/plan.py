"""``--time-budget``'s arithmetic: Hyperband's rounds, what a search and a retrain cost, the plan. Pure."""

from __future__ import annotations

import dataclasses
import math

from cxr_tuner.search.figures.text import duration_text

MARGIN = 0.15
"""Share of the budget kept free for what the prediction misses (process exit, saving)."""
CALIBRATION_EPOCHS = 2
"""Epochs per calibration fit: the first holds the build and trace, the second is a steady epoch."""
TRIAL_BOOKKEEPING = 0.5
"""Seconds per trial beyond its fit: KerasTuner's checkpoint and trial files, HParams, clearing the session."""
# After the retrain: assemble the final model, evaluate on the test split (Grad-CAM
# galleries, chest-hidden probe, bootstrap, report), export (.keras, SavedModel, TFLite
# and their agreement checks). Priced as TAIL_FIXED seconds plus TAIL_PER_FORWARD forward
# passes of the dearest model over every image: a prior, for a run directory that has not
# measured them yet (a run that has, summary.json, plans with its own figures). Measured on 2
# busy cores: 40 s at 48 px on 360 images (a pass 1.2 s); before evaluate's and export's
# speed-ups (eec7022) 64 s there and 190 s at 224 px on 2,000 films (a pass 24 s).
TAIL_FIXED = 35.0
TAIL_PER_FORWARD = 4.0
TAIL_STAGES = ("final model", "evaluate", "export")  # their records in summary.json (search.engine.timing)
PROCESS_RESERVE = 15.0
"""Seconds outside the job's clock: the interpreter's start before the command and its exit after it
(measured 14 s on 2 cores: freeing TensorFlow's and the run's objects)."""
SEARCH_START_TRIALS = 2
"""The search's own start and end (the tuner declares the space by building a model, HParams are written)
cost about this many trials' overhead."""


@dataclasses.dataclass(frozen=True)
class RetrainPlan:
    """How the winners are retrained (see `search.final.retrain.retrain`)."""

    top_k: int = 3
    variants: bool = True
    epochs: int = 0  # most epochs per fit (early stopping ends most sooner)

    def fits(self, seeds: int = 1) -> int:
        """Fits it runs at most: the variants of the rank-1 configuration (one of them kept) and the others' seeds."""
        return (3 - 1 if self.variants else 0) + self.top_k * seeds

    def text(self) -> str:
        if not self.top_k:
            return "none (--no-retrain)"
        return (f"top {self.top_k}, {'variants on' if self.variants else 'variants off'}, "
                f"up to {self.epochs} epochs")


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Measured seconds on this machine (from :func:`calibrate`).

    Attributes:
        epoch: One steady epoch of an average trial (mean of the cheapest and the dearest shape).
        overhead: A trial's build and first-epoch tracing, beyond its epochs.
        epoch_max: One steady epoch of the dearest shape (the retrain is priced at it).
        overhead_max: Its build and tracing.
        forward: One forward pass of the dearest whole image model over all images.
        shapes: What was timed, per backbone, for the plan line.
        tail: Seconds the final model, evaluation and export took when this run directory
            last ran them (``summary.json``); None: not measured, priced from ``forward``.
    """

    epoch: float
    overhead: float
    epoch_max: float
    overhead_max: float
    forward: float = 0.0
    shapes: dict = dataclasses.field(default_factory=dict)
    tail: float | None = None


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the job will do within the budget, and the predicted seconds of each part."""

    budget: float
    spent: float
    max_epochs: int
    factor: int
    brackets: int
    trials: int
    epochs: int
    search: float
    retrain: RetrainPlan
    retrain_seconds: float
    tail: float
    fits: bool

    @property
    def finish(self) -> float:
        """Predicted seconds from the job's start to its end."""
        return self.spent + self.search + self.retrain_seconds + self.tail

    @property
    def search_deadline(self) -> float:
        """Seconds from the job's start after which the search starts no trial."""
        return self.budget * (1 - MARGIN) - self.retrain_seconds - self.tail

    def lines(self, calibration: Calibration) -> list[str]:
        shapes = "; ".join(f"{b}: {t}" for b, t in calibration.shapes.items())
        verdict = "" if self.fits else " (over budget: the smallest job does not fit; it runs anyway)"
        tail = "measured" if calibration.tail is not None else "priced"
        return [
            f"time budget {duration_text(self.budget)}: {self.spent:.0f} s spent (data, extraction, calibration); "
            f"calibration: epoch {calibration.epoch:.2f} s (dearest {calibration.epoch_max:.2f} s), "
            f"trial overhead {calibration.overhead:.1f} s ({shapes})",
            f"plan: Hyperband max_epochs {self.max_epochs}, factor {self.factor}, {self.brackets} bracket(s), "
            f"{self.trials} trials ({self.epochs} epochs) ~{self.search:.0f} s; retrain {self.retrain.text()} "
            f"~{self.retrain_seconds:.0f} s; final model, evaluate, export ~{self.tail:.0f} s ({tail}); "
            f"predicted finish {self.finish:.0f} s of {self.budget:.0f} s{verdict}",
        ]

    def record(self, calibration: Calibration) -> dict:
        found = dataclasses.asdict(self)
        found.update(finish=self.finish, search_deadline=self.search_deadline, margin=MARGIN,
                     calibration=dataclasses.asdict(calibration))
        return found


# Hyperband's arithmetic, as keras_tuner's HyperbandOracle (1.4.8) computes it.
def hyperband_rounds(max_epochs: int, factor: int) -> list[dict]:
    """Every round of one Hyperband iteration: bracket, round, trials, epochs each trial trains.

    A promoted trial continues its parent from ``initial_epoch`` (KerasTuner's
    Hyperband and this project's), so it trains the difference of the rounds' epochs.
    """
    brackets, epochs = 0, float(max_epochs)
    while epochs >= 1:
        epochs /= factor
        brackets += 1
    end_size = math.ceil(1 + math.log(max_epochs, factor))
    rounds = []
    for bracket in reversed(range(brackets)):  # the most aggressive bracket first
        previous = 0
        for round_num in range(bracket + 1):
            size = math.ceil(end_size / (bracket + 1) * factor ** (bracket - round_num))
            total = math.ceil(max_epochs / factor ** (bracket - round_num))
            rounds.append({"bracket": bracket, "round": round_num, "trials": size, "epochs": total - previous})
            previous = total
    return rounds


def search_cost(max_epochs: int, factor: int, calibration: Calibration) -> tuple[int, int, int, float]:
    """(brackets, trials, epochs trained, predicted seconds) of a Hyperband search."""
    rounds = hyperband_rounds(max_epochs, factor)
    trials = sum(r["trials"] for r in rounds)
    epochs = sum(r["trials"] * r["epochs"] for r in rounds)
    seconds = ((trials + SEARCH_START_TRIALS) * (calibration.overhead + TRIAL_BOOKKEEPING)
               + epochs * calibration.epoch)
    return len({r["bracket"] for r in rounds}), trials, epochs, seconds


def retrain_cost(plan: RetrainPlan, calibration: Calibration, seeds: int = 1) -> float:
    """Predicted seconds of a retrain: every fit at the dearest shape for all its epochs, plus saving."""
    per_fit = calibration.overhead_max + plan.epochs * calibration.epoch_max + TRIAL_BOOKKEEPING
    return plan.fits(seeds) * per_fit


def tail_cost(calibration: Calibration) -> float:
    """Predicted seconds of the final model, evaluation and export (and the process's exit)."""
    if calibration.tail is not None:
        return calibration.tail + PROCESS_RESERVE
    return TAIL_FIXED + TAIL_PER_FORWARD * calibration.forward + PROCESS_RESERVE


def retrain_levels(max_epochs: int, top_k: int = 3) -> list[RetrainPlan]:
    """The retrains the planner chooses from, fullest first; the last is the least that makes a model."""
    full = 2 * max_epochs
    return [RetrainPlan(top_k, True, full), RetrainPlan(top_k, False, full), RetrainPlan(1, False, full),
            RetrainPlan(1, False, max(1, max_epochs))]


MIN_SEARCH_EPOCHS = 3
"""The smallest Hyperband the planner cuts the retrain for before cutting the search further."""


def _preference(choices: list[int], top_k: int) -> list[tuple[int, RetrainPlan]]:
    """(max_epochs, retrain) in the planner's order of preference, best first."""
    floor = min(MIN_SEARCH_EPOCHS, max(choices))
    large, small = [m for m in choices if m >= floor], [m for m in choices if m < floor]
    order = [(m, retrain_levels(m, top_k)[0]) for m in large]
    order += [(m, retrain_levels(m, top_k)[i]) for i in range(1, 4) for m in large]
    order += [(m, level) for m in small for level in retrain_levels(m, top_k)]
    return order


def plan(budget: float, spent: float, calibration: Calibration, max_epochs: int, factor: int,
         fixed_max_epochs: bool = False, top_k: int = 3, seeds: int = 1, retrain: bool = True) -> Plan:
    """The largest Hyperband (``max_epochs`` at most the given) whose job is predicted to fit the budget.

    Preference (`_preference`): the largest ``max_epochs`` that fits with the full
    retrain, as long as the search keeps ``MIN_SEARCH_EPOCHS`` (6 trials at factor 3);
    then the next smaller retrain with the largest such search that fits, and so on;
    then smaller searches; when nothing fits,
    the smallest job (``fits`` False). ``fixed_max_epochs``
    (a resumed search, whose Hyperband is saved) plans only the retrain. Without
    ``retrain`` (``--no-retrain``) the search has the whole budget.
    """
    usable = budget * (1 - MARGIN) - spent
    tail = tail_cost(calibration) if retrain else 0.0
    choices = [max_epochs] if fixed_max_epochs else list(range(max_epochs, 0, -1))

    def make(epochs, level, fits):
        brackets, trials, trained, seconds = search_cost(epochs, factor, calibration)
        level = level if retrain else RetrainPlan(0, False, 0)
        return Plan(budget, spent, epochs, factor, brackets, trials, trained, seconds, level,
                    retrain_cost(level, calibration, seeds) if retrain else 0.0, tail, fits)

    for epochs, level in _preference(choices, top_k):
        candidate = make(epochs, level, True)
        if candidate.search + candidate.retrain_seconds + tail <= usable:
            return candidate
    return make(choices[-1], retrain_levels(choices[-1], top_k)[-1], False)


def retrain_plan(remaining: float, calibration: Calibration, max_epochs: int, top_k: int = 3,
                 seeds: int = 1) -> RetrainPlan:
    """The fullest retrain predicted to fit in ``remaining`` seconds (with the tail); at least the least one."""
    usable = remaining - tail_cost(calibration)
    levels = retrain_levels(max_epochs, top_k)
    for level in levels:
        if retrain_cost(level, calibration, seeds) <= usable:
            return level
    return levels[-1]

