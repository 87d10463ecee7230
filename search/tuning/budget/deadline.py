"""Keeping the search to its share of ``--time-budget``: the deadline, and the Hyperband oracle that keeps it."""

from __future__ import annotations

import copy
import time
from typing import Callable

import keras_tuner

class Deadline:
    """When the search stops starting trials: given to the Hyperband oracle (:class:`DeadlineHyperbandOracle`).

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


class DeadlineHyperbandOracle(keras_tuner.oracles.HyperbandOracle):
    """KerasTuner's Hyperband oracle that stops (STOPPED, the search loop's end) at its :attr:`deadline`.

    The trial it would start next is proposed, and refused with every change of the
    oracle's state undone (its public ``get_state`` / ``set_state``) when the deadline
    does not allow it, so a saved oracle never holds a round it did not start. Without
    a deadline (the default; `search.tuning.budget.driver.Budget.watch` gives one) it is
    KerasTuner's Hyperband.
    """

    deadline: Deadline | None = None

    def populate_space(self, trial_id):
        if self.deadline is None:
            return super().populate_space(trial_id)
        # The first model always trains: the job needs a best one.
        first = not any(t.status == "COMPLETED" for t in self.trials.values())
        saved = copy.deepcopy(self.get_state())
        response = super().populate_space(trial_id)
        values = response.get("values") or {}
        if response.get("status") == "RUNNING" and "tuner/epochs" in values:
            epochs = values["tuner/epochs"] - values.get("tuner/initial_epoch", 0)
            if not self.deadline.allows(epochs, force=first):
                self.set_state(saved)
                return {"status": "STOPPED"}
        return response
