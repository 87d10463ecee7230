"""--time-budget's planner: Hyperband's arithmetic and the plan on given figures.

No model trains here: the oracle is KerasTuner's own, fed made-up scores.
"""

import dataclasses

import keras_tuner
import pytest

from cxr_tuner.search.tuning.budget import plan as budget
from cxr_tuner.search.tuning.budget.hyperband import hyperband_rounds
from cxr_tuner.search.tuning.budget.plan import Calibration, plan, retrain_plan
from cxr_tuner.search.tuning.budget.tail import TailWork, tail_parts
from cxr_tuner.search.figures.text import parse_duration

FIGURES = Calibration(epoch=2.0, overhead=3.0, epoch_max=4.0, overhead_max=6.0, forward=0.01, trace=0.5, keep=0.2,
                      render=0.005)
WORK = TailWork(test=300, train=1400)


def _oracle(max_epochs, factor, tmp_path, kind=keras_tuner.oracles.HyperbandOracle):
    hp = keras_tuner.HyperParameters()
    hp.Float("x", 0.0, 1.0)
    oracle = kind(
        keras_tuner.Objective("score", "min"), max_epochs=max_epochs, factor=factor, seed=1, hyperparameters=hp)
    oracle._set_project_dir(str(tmp_path), "tuner")
    return oracle


def _run(oracle, tick=None) -> list:
    """Runs trials until the oracle stops; each scores its x. ``tick()`` after each trial (a fake clock)."""
    ran = []
    while True:
        trial = oracle.create_trial("tuner0")
        if trial.status == "STOPPED":
            return ran
        values = trial.hyperparameters.values
        ran.append((values["tuner/bracket"], values["tuner/round"], values["tuner/epochs"],
                    values["tuner/initial_epoch"]))
        oracle.update_trial(trial.trial_id, {"score": values["x"]})
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
        if tick:
            tick()


@pytest.mark.parametrize("max_epochs, factor", [(1, 3), (3, 3), (8, 3), (9, 3), (4, 2)])
def test_hyperband_arithmetic_matches_keras_tuners_oracle(tmp_path, max_epochs, factor):
    ran = _run(_oracle(max_epochs, factor, tmp_path))
    rounds = hyperband_rounds(max_epochs, factor)
    assert len(ran) == sum(r["trials"] for r in rounds)
    assert sum(e - start for _, _, e, start in ran) == sum(r["trials"] * r["epochs"] for r in rounds)


def test_plan_picks_the_largest_max_epochs_whose_job_fits_the_budget():
    chosen = plan(budget=450, spent=60, calibration=FIGURES, max_epochs=9, factor=3, work=WORK)
    assert chosen.fits and not chosen.cut and chosen.retrain.top_k == 3 and chosen.retrain.variants
    assert chosen.finish <= 450 * budget.AIM
    assert 1 <= chosen.max_epochs < 9
    # One epoch more would not fit: with the same full retrain, its prediction passes the budget's usable part.
    bigger = plan(budget=10**6, spent=60, calibration=FIGURES, max_epochs=chosen.max_epochs + 1, factor=3, work=WORK)
    assert bigger.max_epochs == chosen.max_epochs + 1 and bigger.finish > 450 * budget.AIM
    # A generous budget runs what the flags ask, never more.
    assert plan(budget=10**6, spent=60, calibration=FIGURES, max_epochs=9, factor=3).max_epochs == 9


def test_the_flags_hyperband_runs_cut_at_its_deadline_when_its_first_bracket_fits():
    smaller = plan(budget=450, spent=60, calibration=FIGURES, max_epochs=9, factor=3, work=WORK)
    cut = plan(budget=600, spent=60, calibration=FIGURES, max_epochs=9, factor=3, work=WORK)
    whole = sum(r["trials"] for r in hyperband_rounds(9, 3))
    first = sum(r["trials"] for r in hyperband_rounds(9, 3) if r["bracket"] == 2)
    assert cut.cut and cut.max_epochs == 9 and first <= cut.trials < whole and cut.trials > smaller.trials
    assert cut.retrain == budget.retrain_levels(9, 3)[0]
    # Its search has the whole share the rest leaves: the deadline, not the last whole round, ends it.
    assert cut.finish == pytest.approx(600 * budget.AIM) and cut.search_deadline == pytest.approx(60 + cut.search)
    assert "cut at its deadline after its first 2 bracket(s)" in cut.lines(FIGURES)[1]


def test_plan_cuts_the_retrain_before_giving_up_and_says_when_nothing_fits():
    tight = plan(budget=260, spent=60, calibration=FIGURES, max_epochs=9, factor=3, work=WORK)
    assert tight.fits and tight.finish <= 260 * budget.AIM
    # The search kept at least 6 trials; the retrain gave up its variants first.
    assert tight.max_epochs >= budget.MIN_SEARCH_EPOCHS and not tight.retrain.variants
    hopeless = plan(budget=30, spent=60, calibration=FIGURES, max_epochs=9, factor=3, work=WORK)
    assert not hopeless.fits and hopeless.max_epochs == 1 and hopeless.retrain.top_k == 1
    assert "over budget" in hopeless.lines(FIGURES)[-1]


def test_a_generous_budget_runs_what_the_flags_ask_never_a_larger_search():
    asked = plan(budget=10**6, spent=60, calibration=FIGURES, max_epochs=3, factor=3, work=WORK)
    assert asked.max_epochs == 3 and asked.retrain == budget.retrain_levels(3, 3)[0]


def test_the_retrain_is_planned_again_from_the_time_left():
    tail = 50.0
    levels = [retrain_plan(left, FIGURES, 3, top_k=3, tail=tail) for left in (60, 120, 200, 400, 2000)]
    costs = [budget.retrain_cost(level, FIGURES) for level in levels]
    assert costs == sorted(costs) and levels[0].top_k == 1 and levels[-1] == budget.retrain_levels(3, 3)[0]
    assert all(cost <= left - tail for cost, left in zip(costs[1:], (120, 200, 400, 2000)))
    # A warm start trains fewer epochs: the same time buys at least as much retrain.
    warm = retrain_plan(200, FIGURES, 3, top_k=3, tail=tail, from_="search")
    assert budget.retrain_cost(warm, FIGURES, "search") <= 200 - tail and warm.fits() >= levels[2].fits()


def test_the_stages_after_the_retrain_are_priced_from_the_films_they_go_through():
    alone = tail_parts(FIGURES, WORK)
    external = tail_parts(FIGURES, TailWork(test=300, train=1400, external=(263,)))
    assert external["final model"] == alone["final model"] and external["export"] == alone["export"]
    # An external set is scored as filmed and in every stress family: at least that many passes over its films.
    assert external["evaluate"] - alone["evaluate"] >= 263 * (FIGURES.forward * 9 + FIGURES.render)
    slower = Calibration(**{**FIGURES.__dict__, "forward": 2 * FIGURES.forward})
    assert tail_parts(slower, WORK)["evaluate"] > alone["evaluate"]


def test_a_search_without_retrain_has_the_whole_budget():
    with_retrain = plan(budget=450, spent=60, calibration=FIGURES, max_epochs=9, factor=3, work=WORK)
    alone = plan(budget=450, spent=60, calibration=FIGURES, max_epochs=9, factor=3, retrain=False)
    assert alone.trials > with_retrain.trials and alone.retrain_seconds == alone.tail == 0


def test_a_run_that_measured_its_final_stages_plans_with_them():
    measured = dataclasses.replace(FIGURES, tail=150.0)
    seconds, parts = budget.tail_cost(measured, WORK)
    assert seconds == 150.0 + parts["exit"] and parts["measured"] == 150.0
    assert plan(600, 60, measured, 9, 3, work=WORK).trials < plan(600, 60, FIGURES, 9, 3, work=WORK).trials


def test_a_resumed_search_keeps_its_hyperband_and_only_the_retrain_is_planned():
    assert plan(budget=200, spent=60, calibration=FIGURES, max_epochs=9, factor=3, fixed_max_epochs=True).max_epochs == 9


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("15m", 900), ("1h30m", 5400), ("2m30s", 150), ("300", 300)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "5x", "m", "1h-3m", "-5m"])
def test_bad_durations_say_what_to_write(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)
