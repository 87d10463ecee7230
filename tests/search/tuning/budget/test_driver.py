"""--time-budget's driver: the plan revised at the search's end with the time left, in plan.json.

No model trains here: the clock is made up, the plan comes from given figures.
"""

import json
from types import SimpleNamespace

import pytest

from cxr_tuner.search.tuning.budget import plan as budget
from cxr_tuner.search.tuning.budget.driver import Budget
from tests.search.tuning.budget.test_plan import FIGURES, WORK


def _budget_after_search(tmp_path, search_ended: float):
    """A 600 s budget planned at 60 s, whose search ended at ``search_ended``; its config and plan.json."""
    now = [60.0]
    job = Budget(600, started=0.0, clock=lambda: now[0])
    job.calibration, job.work = FIGURES, WORK
    job.plan = budget.plan(600, 60, FIGURES, 9, 3, work=WORK)
    job.record = {"boundaries": []}
    config = SimpleNamespace(retrain_choices={"top_k": 3, "seeds": 1}, max_epochs=job.plan.max_epochs,
                             layout=SimpleNamespace(plan=tmp_path / f"plan-{search_ended}.json"))
    now[0] = search_ended
    options = job.retrain_options(config, {"trials": job.plan.trials, "top": [{}] * 5}, log=lambda line: None)
    return options, json.loads(config.layout.plan.read_text())


def test_a_search_that_ended_early_gives_the_retrain_more(tmp_path):
    planned_end = budget.plan(600, 60, FIGURES, 9, 3, work=WORK).search_deadline
    early, early_plan = _budget_after_search(tmp_path, planned_end - 150)
    late, late_plan = _budget_after_search(tmp_path, planned_end + 60)
    chosen = [record["retrain_chosen"] for record in (early_plan, late_plan)]
    costs = [budget.retrain_cost(budget.RetrainPlan(**c), FIGURES) for c in chosen]
    assert costs[0] > costs[1]
    assert (early["top_k"], early["choose_variant"]) > (late["top_k"], late["choose_variant"])
    assert early["extra_seeds"] == late["extra_seeds"] == budget.EXTRA_SEEDS  # more seeds only while time is left
    for record, ended in ((early_plan, planned_end - 150), (late_plan, planned_end + 60)):
        after = record["boundaries"][-1]
        assert after["after"] == "search" and after["elapsed"] == ended and after["retrain_seconds"] <= max(
            after["retrain_deadline"] - ended, min(costs))
    # Each retrain ends when the stages after it (priced for its winners) must start to end at the plan's aim.
    for options, record in ((early, early_plan), (late, late_plan)):
        after = record["boundaries"][-1]
        assert options["stop_at"] == after["retrain_deadline"] == pytest.approx(600 * budget.AIM - after["tail"])


def test_the_retrain_takes_no_more_winners_than_the_search_found(tmp_path):
    now = [0.0]
    job = Budget(10**5, started=0.0, clock=lambda: now[0])
    job.calibration, job.work, job.record = FIGURES, WORK, {"boundaries": []}
    job.plan = budget.plan(10**5, 0, FIGURES, 1, 3, work=WORK)
    config = SimpleNamespace(retrain_choices={"top_k": 3, "seeds": 1}, max_epochs=1,
                             layout=SimpleNamespace(plan=tmp_path / "plan.json"))
    lines = []
    options = job.retrain_options(config, {"trials": 1, "top": [{}]}, log=lines.append)
    assert options["top_k"] == 1 and "retrain top 1 (of 3 asked: the search found 1 configuration)," in lines[0]

