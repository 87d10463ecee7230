"""``--time-budget``'s Hyperband arithmetic: its rounds as KerasTuner runs them, what a search costs. Pure."""

from __future__ import annotations

import math

TRIAL_BOOKKEEPING = 0.5
"""Seconds per trial beyond its fit: KerasTuner's checkpoint and trial files, HParams, clearing the session."""
SEARCH_START_TRIALS = 2
"""The search's own start and end (the tuner declares the space by building a model, HParams are written)
cost about this many trials' overhead."""


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


def search_cost(max_epochs: int, factor: int, calibration) -> tuple[int, int, int, float]:
    """(brackets, trials, epochs trained, predicted seconds) of a Hyperband search."""
    rounds = hyperband_rounds(max_epochs, factor)
    trials = sum(r["trials"] for r in rounds)
    epochs = sum(r["trials"] * r["epochs"] for r in rounds)
    seconds = ((trials + SEARCH_START_TRIALS) * (calibration.overhead + TRIAL_BOOKKEEPING)
               + epochs * calibration.epoch)
    return len({r["bracket"] for r in rounds}), trials, epochs, seconds


def cut_search(max_epochs: int, factor: int, calibration, seconds: float) -> tuple | None:
    """(whole brackets, trials, epochs, predicted seconds) of the rounds of a Hyperband that fit in ``seconds``,
    in the order KerasTuner runs them (its most aggressive bracket first); None unless that bracket is whole."""
    rounds = hyperband_rounds(max_epochs, factor)
    spent, trials, epochs, taken = SEARCH_START_TRIALS * (calibration.overhead + TRIAL_BOOKKEEPING), 0, 0, []
    for r in rounds:
        cost = r["trials"] * (calibration.overhead + TRIAL_BOOKKEEPING) + r["trials"] * r["epochs"] * calibration.epoch
        if spent + cost > seconds:
            break
        spent, trials, epochs = spent + cost, trials + r["trials"], epochs + r["trials"] * r["epochs"]
        taken.append(r)
    whole = [b for b in {r["bracket"] for r in rounds}
             if sum(t["bracket"] == b for t in taken) == sum(r["bracket"] == b for r in rounds)]
    return (len(whole), trials, epochs, spent) if rounds[0]["bracket"] in whole else None
