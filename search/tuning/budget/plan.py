"""``--time-budget``'s plan: what a retrain costs, and the search and retrain that fit the budget. Pure."""

from __future__ import annotations

import dataclasses

from cxr_tuner.search.figures.text import duration_text
from cxr_tuner.search.tuning.budget.hyperband import TRIAL_BOOKKEEPING, cut_search, search_cost
from cxr_tuner.search.tuning.budget.tail import TailWork, tail_parts

AIM = 0.92
"""Share of the budget the plan fills: the job is to end between 85% and 100% of it, and the last 8%
are for what the prediction misses (a tail stage's figures, an epoch that ran late)."""
MARGIN = 1 - AIM
CALIBRATION_EPOCHS = 2
"""Epochs per calibration fit: the first holds the build and trace, the second is a steady epoch."""
TAIL_STAGES = ("final model", "evaluate", "export")  # their records in summary.json (search.engine.timing)
RETRAIN_EPOCH_SHARE = {"scratch": 0.9, "search": 0.35}
"""Share of a retrain fit's most epochs it trains before early stopping ends it, by where it starts
(``--retrain-from``), measured on cxr3-dev: from scratch 80 epochs in 5 fits of at most 18; from the
search's weights about a third of scratch's wall time (docs/final-model.md)."""
RETRAIN_SHAPE = 1.2
"""A winner's epoch against the search's average trial epoch (winners unfreeze deeper): 0.85 s to 0.73 s
at each fit's fastest epoch on cxr3-dev."""
EXTRA_SEEDS = 2
"""Seeds per winner the retrain adds, at most, while its deadline leaves time for them (time left to spend)."""


@dataclasses.dataclass(frozen=True)
class RetrainPlan:
    """How the winners are retrained (see `search.final.retrain.retrain`)."""

    top_k: int = 3
    variants: bool = True
    epochs: int = 0  # most epochs per fit (early stopping ends most sooner)
    seeds: int = 1

    def fits(self) -> int:
        """Fits it runs at most: the variants of the rank-1 configuration (one of them kept) and the others' seeds."""
        return (3 - 1 if self.variants else 0) + self.top_k * self.seeds

    def text(self, note: str = "") -> str:
        """What it does, ``note`` after its count of winners."""
        if not self.top_k:
            return "none (--no-retrain)"
        return (f"top {self.top_k}{note}, {'variants on' if self.variants else 'variants off'}, "
                f"{self.seeds} seed{'s' if self.seeds > 1 else ''} each, up to {self.epochs} epochs")


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Measured seconds on this machine (from :func:`calibrate`).

    Attributes:
        epoch: One steady epoch of an average trial (mean of the cheapest and the dearest shape).
        overhead: A trial's build and first-epoch tracing, beyond its epochs.
        epoch_max: One steady epoch of the dearest shape.
        overhead_max: Its build, tracing and save of the whole image model (a retrain fit's).
        forward: One film through the dearest whole image model (a steady forward pass).
        trace: A predict's first call beyond a steady one (each new model in evaluation and export).
        keep: One save of the dearest whole image model.
        render: One film re-rendered in every stress-test family.
        shapes: What was timed, per backbone, for the plan line.
        tail: Seconds the final model, evaluation and export took when this run directory
            last ran them (``summary.json``); None: not measured, priced (`tail.tail_parts`).
    """

    epoch: float
    overhead: float
    epoch_max: float
    overhead_max: float
    forward: float = 0.0
    trace: float = 0.0
    keep: float = 0.0
    render: float = 0.0
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
    tail_parts: dict = dataclasses.field(default_factory=dict)
    cut: bool = False  # the Hyperband is the flags' whole one, cut at the search's deadline after ``trials``

    @property
    def finish(self) -> float:
        """Predicted seconds from the job's start to its end."""
        return self.spent + self.search + self.retrain_seconds + self.tail

    @property
    def search_deadline(self) -> float:
        """Seconds from the job's start after which the search starts no trial."""
        return self.budget * AIM - self.retrain_seconds - self.tail

    def lines(self, calibration: Calibration) -> list[str]:
        shapes = "; ".join(f"{b}: {t}" for b, t in calibration.shapes.items())
        verdict = "" if self.fits else " (over budget: the smallest job does not fit; it runs anyway)"
        tail = "measured in this run directory" if calibration.tail is not None else "priced"
        return [
            f"time budget {duration_text(self.budget)}: {self.spent:.0f} s spent (data, extraction, calibration); "
            f"calibration: epoch {calibration.epoch:.2f} s (dearest {calibration.epoch_max:.2f} s), "
            f"trial overhead {calibration.overhead:.1f} s, forward pass {1000 * calibration.forward:.1f} ms/film "
            f"({shapes})",
            f"plan: Hyperband max_epochs {self.max_epochs}, factor {self.factor}, "
            + (f"cut at its deadline after its first {self.brackets} bracket(s), at least " if self.cut
               else f"{self.brackets} bracket(s), ")
            + f"{self.trials} trials ({self.epochs} epochs) ~{self.search:.0f} s; retrain {self.retrain.text()} "
            f"~{self.retrain_seconds:.0f} s; final model, evaluate, export and exit ~{self.tail:.0f} s ({tail}); "
            f"predicted finish {self.finish:.0f} s of {self.budget:.0f} s{verdict}",
        ]

    def record(self, calibration: Calibration) -> dict:
        found = dataclasses.asdict(self)
        found.update(finish=self.finish, search_deadline=self.search_deadline, aim=AIM,
                     calibration=dataclasses.asdict(calibration))
        return found


def retrain_cost(plan: RetrainPlan, calibration: Calibration, from_: str = "scratch") -> float:
    """Predicted seconds of a retrain: per fit its build, trace and save, and the share of its epochs early
    stopping leaves (by ``from_``) at a winner's epoch (``RETRAIN_SHAPE`` times the average trial's, at most
    the dearest's); a warm start first scores the search's weights (priced as an epoch)."""
    epoch = min(calibration.epoch_max, RETRAIN_SHAPE * calibration.epoch)
    trained = max(1.0, plan.epochs * RETRAIN_EPOCH_SHARE[from_]) + (1 if from_ == "search" else 0)
    return plan.fits() * (calibration.overhead_max + TRIAL_BOOKKEEPING + trained * epoch)


def tail_cost(calibration: Calibration, work: TailWork | None) -> tuple[float, dict]:
    """Predicted seconds of the final model, evaluation, export and the process's exit, and each part's.

    A run directory that measured its own (``calibration.tail``) plans with those.
    """
    parts = tail_parts(calibration, work or TailWork(test=0, train=0))
    if calibration.tail is not None:
        parts = {"measured": calibration.tail, "exit": parts["exit"]}
    return sum(parts.values()), parts


def retrain_levels(max_epochs: int, top_k: int = 3, seeds: int = 1) -> list[RetrainPlan]:
    """The retrains the flags allow, fullest first (then without variants, fewer winners, one seed, fewer
    epochs); the last is the least that makes a model."""
    full = 2 * max_epochs
    levels = [RetrainPlan(top_k, True, full, seeds)] + [RetrainPlan(k, False, full, seeds) for k in range(top_k, 0, -1)]
    levels += [RetrainPlan(1, False, full, 1)] if seeds > 1 else []
    return levels + [RetrainPlan(1, False, max(1, max_epochs), 1)]


MIN_SEARCH_EPOCHS = 3
"""The smallest Hyperband the planner cuts the retrain for before cutting the search further."""


def _preference(choices: list[int], top_k: int, seeds: int) -> list[tuple[int, RetrainPlan]]:
    """(max_epochs, retrain) in the planner's order of preference, best first."""
    floor = min(MIN_SEARCH_EPOCHS, max(choices))
    large, small = [m for m in choices if m >= floor], [m for m in choices if m < floor]
    levels = {m: retrain_levels(m, top_k, seeds) for m in choices}
    order = [(m, levels[m][0]) for m in large]
    order += [(m, levels[m][i]) for i in range(1, len(levels[choices[0]])) for m in large]
    order += [(m, level) for m in small for level in levels[m]]
    return order


def plan(budget: float, spent: float, calibration: Calibration, max_epochs: int, factor: int,
         fixed_max_epochs: bool = False, top_k: int = 3, seeds: int = 1, retrain: bool = True,
         from_: str = "scratch", work: TailWork | None = None) -> Plan:
    """The largest Hyperband (``max_epochs`` at most the given) whose job is predicted to fit the budget.

    Preference (`_preference`): the largest ``max_epochs`` that fits with the full
    retrain, as long as the search keeps ``MIN_SEARCH_EPOCHS`` (6 trials at factor 3);
    then the next smaller retrain with the largest such search that fits, and so on;
    then smaller searches; when nothing fits, the smallest job (``fits`` False). Where the
    flags' Hyperband does not fit whole but its first (most aggressive) bracket does, with the
    chosen retrain, and it would run more trials than the smaller one chosen, it runs cut at the
    search's deadline instead (``cut``): the same seed gives the same first trials as without a
    budget, and its later brackets (fewer configurations, trained longer) are what is cut.
    ``fixed_max_epochs`` (a resumed search, whose Hyperband is saved) plans only the
    retrain. Without ``retrain`` (``--no-retrain``) the search has the whole budget.
    ``work``: what the stages after the retrain go through (`tail.TailWork`).
    """
    usable = budget * AIM - spent
    tail, parts = tail_cost(calibration, work) if retrain else (0.0, {})
    choices = [max_epochs] if fixed_max_epochs else list(range(max_epochs, 0, -1))

    def make(epochs, level, fits):
        brackets, trials, trained, seconds = search_cost(epochs, factor, calibration)
        # No more winners than the search makes configurations: the plan says what the retrain will do.
        level = dataclasses.replace(level, top_k=min(level.top_k, trials)) if retrain else RetrainPlan(0, False, 0, 0)
        return Plan(budget, spent, epochs, factor, brackets, trials, trained, seconds, level,
                    retrain_cost(level, calibration, from_) if retrain else 0.0, tail, fits, parts)

    def cut(epochs, level, smaller: Plan) -> Plan:
        """The flags' Hyperband cut at the deadline, when its first bracket fits and it runs more trials;
        its search has the whole share the retrain leaves (the deadline ends it)."""
        level = retrain_levels(choices[0], top_k, seeds)[retrain_levels(epochs, top_k, seeds).index(level)]
        retraining = retrain_cost(level, calibration, from_) if retrain else 0.0
        share = usable - retraining - tail
        found = cut_search(choices[0], factor, calibration, share)
        if found is None or found[1] <= smaller.trials:
            return smaller
        level = dataclasses.replace(level, top_k=min(level.top_k, found[1])) if retrain else smaller.retrain
        return Plan(budget, spent, choices[0], factor, found[0], found[1], found[2], share, level,
                    retraining, tail, True, parts, cut=True)

    for epochs, level in _preference(choices, top_k, seeds):
        candidate = make(epochs, level, True)
        if candidate.search + candidate.retrain_seconds + tail <= usable:
            return candidate if epochs == choices[0] else cut(epochs, level, candidate)
    return make(choices[-1], retrain_levels(choices[-1], top_k)[-1], False)


def retrain_plan(remaining: float, calibration: Calibration, max_epochs: int, top_k: int = 3, seeds: int = 1,
                 from_: str = "scratch", tail: float = 0.0) -> RetrainPlan:
    """The fullest retrain predicted to fit in ``remaining`` seconds after ``tail`` seconds; at least the least one.

    ``top_k``: at most the configurations the search found.
    """
    usable = remaining - tail
    levels = retrain_levels(max_epochs, top_k, seeds)
    for level in levels:
        if retrain_cost(level, calibration, from_) <= usable:
            return level
    return levels[-1]
