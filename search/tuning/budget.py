"""``--time-budget``: plan the whole job to finish within a wall-clock budget, and keep to it.

After the data stage and the activation extraction (their time counts), a short
calibration times a few epochs of the dearest trial shape the space allows on the
cached activations (deepest cached unfreeze depth, widest head) and of the cheapest,
per backbone. From those figures the planner picks Hyperband's ``max_epochs`` (at
most the run's ``--max-epochs``; ``--factor`` is kept) and the retrain (top-k,
variants, epochs) so that search + retrain + final model, evaluation and export are
predicted to fit the budget with a margin. The plan is printed before the first
trial and saved as ``RUN_DIR/plan.json``.

Keeping to it: the oracle starts no trial once the search's share is spent, nor one
predicted to overrun it (:class:`Deadline`, checked in ``populate_space``, the hook
KerasTuner's search loop ends on); the retrain is planned again from what is left
when the search ends (:func:`retrain_plan`), down to the rank-1 configuration
trained once, as searched. The best model so far is always retrained, assembled,
evaluated and exported, even when that overruns.

The arithmetic (:func:`hyperband_rounds`, :func:`plan`, :func:`retrain_plan`) is
pure; only :func:`calibrate` and :class:`Budget` touch the clock or Keras.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from typing import Callable

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
TAIL_STAGES = ("final model", "evaluate", "export")  # their records in summary.json (search.timing)
PROCESS_RESERVE = 15.0
"""Seconds outside the job's clock: the interpreter's start before the command and its exit after it
(measured 14 s on 2 cores: freeing TensorFlow's and the run's objects)."""
SEARCH_START_TRIALS = 2
"""The search's own start and end (the tuner declares the space by building a model, HParams are written)
cost about this many trials' overhead."""


@dataclasses.dataclass(frozen=True)
class RetrainPlan:
    """How the winners are retrained (see `search.retrain.retrain`)."""

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


# The clock: measuring, planning and keeping to the plan.
class Deadline:
    """When the search stops starting trials: given to the Hyperband oracle (`DeadlineOracle`).

    Args:
        at: ``time.monotonic()`` after which no trial starts.
        seconds_for: ``(epochs trained) -> predicted seconds`` of a trial; a trial
            predicted to end after ``at`` does not start either.
    """

    def __init__(self, at: float, seconds_for: Callable[[int], float], clock: Callable[[], float] = time.monotonic):
        self.at, self.seconds_for, self.clock = at, seconds_for, clock
        self.stopped = False
        self._started = None  # (clock, predicted seconds) of the trial started last
        self._measured = [0.0, 0.0]  # seconds the trials took, and what was predicted for them

    def allows(self, epochs: int, force: bool = False) -> bool:
        """Whether a trial training ``epochs`` epochs may start now (``force``: it does, and is timed).

        The prediction is scaled by how long the trials so far took against theirs
        (one process runs one trial at a time: a trial lasts until the next request).
        """
        now = self.clock()
        if self._started is not None:
            self._measured[0] += now - self._started[0]
            self._measured[1] += self._started[1]
        predicted = self.seconds_for(epochs)
        ratio = self._measured[0] / self._measured[1] if self._measured[1] > 0 else 1.0
        allowed = force or now + predicted * max(0.5, ratio) <= self.at
        self.stopped = self.stopped or not allowed
        self._started = (now, predicted) if allowed else None
        return allowed


def stop_at_deadline(oracle) -> None:
    """Makes a KerasTuner Hyperband oracle stop (STOPPED, the search loop's end) at ``oracle.deadline``.

    The trial it would start next is proposed, and refused with every change of the
    oracle's state undone when the deadline does not allow it, so a saved oracle
    never holds a round it did not start.
    """
    original = oracle.populate_space

    def populate_space(trial_id):
        deadline = getattr(oracle, "deadline", None)
        if deadline is None:
            return original(trial_id)
        # The first model always trains: the job needs a best one.
        first = not any(t.status == "COMPLETED" for t in oracle.trials.values())
        saved = copy.deepcopy((oracle._brackets, oracle._current_bracket, oracle._current_iteration,
                               oracle._seed_state, oracle._tried_so_far))
        response = original(trial_id)
        values = response.get("values") or {}
        if response.get("status") == "RUNNING" and "tuner/epochs" in values:
            epochs = values["tuner/epochs"] - values.get("tuner/initial_epoch", 0)
            if not deadline.allows(epochs, force=first):
                (oracle._brackets, oracle._current_bracket, oracle._current_iteration,
                 oracle._seed_state, oracle._tried_so_far) = saved
                return {"status": "STOPPED"}
        return response

    oracle.populate_space = populate_space


def shapes(backbone: str, weights: str, cached_depths: int | None, space=None) -> dict[str, dict]:
    """The dearest and the cheapest trial of ``backbone`` in ``space`` (default: the default space).

    ``cached_depths``: how many unfreeze depths train on cached activations (None:
    the backbone trains whole on images, from scratch).
    """
    from cxr_tuner.hypermodels.registry import get_backbone
    from cxr_tuner.hypermodels.space import Space

    space = space or Space()
    deepest, shallowest = space.max_head_depth(), int(space["head_depth"].lowest())
    common = {"backbone": backbone, "dropout": space["dropout"].lowest(),
              "learning_rate": space["learning_rate"].highest()}
    dearest = {**common, "head_depth": deepest, **{f"head_units_{i}": space.units(i).highest() for i in range(deepest)}}
    cheapest = {**common, "head_depth": shallowest,
                **{f"head_units_{i}": space.units(i).lowest() for i in range(shallowest)}}
    if cached_depths is not None and weights != "none":
        unfreeze = space.unfreeze_entry(len(get_backbone(backbone).unfreeze_points))
        dearest["unfreeze_depth"] = max(0, min(cached_depths - 1, unfreeze.highest()))
        cheapest["unfreeze_depth"] = unfreeze.lowest()
    return {"dearest": dearest, "cheapest": cheapest}


def calibrate(hypermodel, cache, config, log: Callable[[str], None] = print,
              clock: Callable[[], float] = time.perf_counter) -> Calibration:
    """Times ``CALIBRATION_EPOCHS`` epochs of the dearest and the cheapest trial of each backbone.

    On the data the trials train on (cached activations, or images for backbones
    trained from scratch); the dearest winner's whole image model is also assembled
    and saved once (what each retrain fit ends with). Nothing is written to the run.
    """
    import tempfile

    import keras
    import keras_tuner
    from pathlib import Path

    from cxr_tuner.hypermodels.cutting import is_cacheable
    from cxr_tuner.hypermodels.registry import get_backbone
    from cxr_tuner.search.tuning.tuner import fresh_keras_state

    figures, found = {}, {}
    _warm_up(hypermodel, config)
    for backbone in config.backbones:
        cacheable = is_cacheable(backbone, config.weights)
        depths = None
        if cacheable:
            depths = (len(get_backbone(backbone).unfreeze_points) + 1 if cache.depths is None
                      else cache.depths.get(backbone, 0))
            depths = depths or None
        timed = {}
        for name, values in shapes(backbone, config.weights, depths, config.search_space()).items():
            hp = keras_tuner.HyperParameters()
            hp.values.update(values)
            fresh_keras_state(config.seed)
            started = clock()
            model = hypermodel.build(hp)
            built = clock() - started
            epochs = []

            class _Timer(keras.callbacks.Callback):
                def on_epoch_begin(self, epoch, logs=None):
                    epochs.append(clock())

                def on_epoch_end(self, epoch, logs=None):
                    epochs[-1] = clock() - epochs[-1]

            hypermodel.fit(hp, model, epochs=CALIBRATION_EPOCHS, verbose=0, callbacks=[_Timer()])
            steady = min(epochs[1:] or epochs)
            timed[name] = {"epoch": steady, "overhead": built + max(0.0, epochs[0] - steady)}
            if name == "dearest":
                started = clock()
                with tempfile.TemporaryDirectory() as folder:
                    image_model = hypermodel.image_model(hp, model) if hasattr(hypermodel, "image_model") else model
                    image_model.save(Path(folder) / "model.keras")
                timed[name]["keep"] = clock() - started
                # A forward pass over every image, from the steady epoch over the train split (a third of a step).
                timed[name]["forward"] = _forward_seconds(cache, backbone, depths, steady, config)
        figures[backbone] = timed
        found[backbone] = (f"dearest {timed['dearest']['epoch']:.2f} s/epoch, "
                           f"cheapest {timed['cheapest']['epoch']:.2f} s/epoch")
    fresh_keras_state(config.seed)
    count = len(figures)
    mean = lambda key, which: sum(f[which][key] for f in figures.values()) / count  # noqa: E731
    return Calibration(
        epoch=(mean("epoch", "dearest") + mean("epoch", "cheapest")) / 2,
        overhead=(mean("overhead", "dearest") + mean("overhead", "cheapest")) / 2,
        epoch_max=max(max(f["dearest"]["epoch"], f["cheapest"]["epoch"]) for f in figures.values()),
        overhead_max=max(f["dearest"]["overhead"] + f["dearest"]["keep"] for f in figures.values()),
        forward=max(f["dearest"]["forward"] for f in figures.values()),
        shapes=found)


def _warm_up(hypermodel, config) -> None:
    """One epoch of the cheapest trial first: the process's first fit pays once for what no trial pays again."""
    import keras_tuner

    from cxr_tuner.hypermodels.cutting import is_cacheable
    from cxr_tuner.search.tuning.tuner import fresh_keras_state

    backbone = config.backbones[0]
    hp = keras_tuner.HyperParameters()
    hp.values.update(shapes(backbone, config.weights, 1 if is_cacheable(backbone, config.weights) else None)["cheapest"])
    fresh_keras_state(config.seed)
    hypermodel.fit(hp, hypermodel.build(hp), epochs=1, verbose=0)


def _forward_seconds(cache, backbone: str, depths, steady_epoch: float, config) -> float:
    """Seconds of one forward pass of ``backbone``'s whole image model over every image of the run.

    Pretrained: the frozen part's rate, timed on one batch of the run's images (after
    a first, traced one); from scratch: a third of a steady training epoch, scaled from
    the train split to every image.
    """
    images = cache.images
    if depths is None:
        return steady_epoch / 3 * len(images) / max(1, round(len(images) * config.fractions[0]))
    model = cache.image_model(backbone)
    batch = images[: min(len(images), 64)]
    model.predict(batch, verbose=0)
    started = time.perf_counter()
    model.predict(batch, verbose=0)
    return (time.perf_counter() - started) * len(images) / len(batch)


def check_plannable(config, retrain: bool = True, augment: bool = False, workers: int = 1, chief: str | None = None,
                    **_) -> None:
    """Refuses, in one line, what ``--time-budget`` cannot plan yet (nothing is written before)."""
    from cxr_tuner.data.errors import UserError

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
        from cxr_tuner.data import files
        from cxr_tuner.search.engine.layout import SPLIT_STAMP

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
        tuner.oracle.deadline = self.deadline
        stop_at_deadline(tuner.oracle)

    def retrain_options(self, config, trials: int, log: Callable[[str], None] = print) -> dict:
        """The retrain's ``top_k``, ``choose_variant`` and ``max_epochs`` for what is left of the budget."""
        from cxr_tuner.data import files

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
        from cxr_tuner.data import files

        spent = self.elapsed()
        self.record.update(finished=spent, within_budget=spent <= self.seconds)
        files.write_json(config.layout.plan, self.record)
        log(f"time budget {duration_text(self.seconds)}: the job took {spent:.0f} s "
            f"({'within' if spent <= self.seconds else 'over'} the budget; plan.json)")


def _measured_tail(layout) -> float | None:
    """Seconds of the final model, evaluation and export this run directory recorded for its split, if all three."""
    from cxr_tuner.search.engine import timing

    found = timing.stages(layout)
    if not all(stage in found for stage in TAIL_STAGES):
        return None
    return sum(float(found[stage]["seconds"]) for stage in TAIL_STAGES)


def _saved_max_epochs(layout) -> int | None:
    """A resumed search's Hyperband ``max_epochs``, from KerasTuner's saved oracle; None for a new search."""
    import json

    if not layout.oracle.is_file():
        return None
    try:
        return int(json.loads(layout.oracle.read_text())["max_epochs"])
    except (ValueError, KeyError, TypeError):
        return None
