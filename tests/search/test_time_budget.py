"""`search --time-budget`: the plan is printed before the first trial, the job ends with a complete model.

One budgeted job on the demo data (32 px, from scratch) is shared by the tests; the
refusals are checked on the command line before anything is written.
"""

import json

import pytest

from cxr_tuner.search.tuning.budget.hyperband import hyperband_rounds
from cxr_tuner.search.engine.layout import RunLayout
from tests.conftest import error_line, run_cli, tree_digest

FLAGS = ("--backbones", "vanilla_cnn", "--weights", "none", "--image-size", 32, "--max-epochs", 8, "--factor", 3)
# One xdist group (see tests/conftest.py): the budgeted job is built once, and the module's two
# jobs (~55 and ~45 s: they fill their budgets) are handed out among the first instead of near the end.
pytestmark = pytest.mark.xdist_group("time_budget")

BUDGET = 60  # seconds: about what the whole job (max_epochs 8) takes here; the plan fits a smaller one to it


@pytest.fixture(scope="module")
def budgeted(tmp_path_factory, demo_data):
    run_dir = tmp_path_factory.mktemp("budget") / "run"
    result = run_cli("search", "--data", demo_data, "--run-dir", run_dir, *FLAGS, "--time-budget", f"{BUDGET}s")
    assert result.exit_code == 0, result.output
    return run_dir, result.output.splitlines()


def test_the_plan_is_printed_before_the_first_trial(budgeted):
    _, lines = budgeted
    plan_at = next(i for i, line in enumerate(lines) if line.startswith("plan: Hyperband max_epochs"))
    first_trial = next(i for i, line in enumerate(lines) if line.startswith("trial "))
    assert plan_at < first_trial
    assert lines[plan_at - 1].startswith("time budget 1m:") and "calibration" in lines[plan_at - 1]
    assert "predicted finish" in lines[plan_at]


def test_the_budgeted_job_ends_with_an_exported_evaluated_model_and_a_smaller_search(budgeted):
    run_dir, lines = budgeted
    layout = RunLayout(run_dir)
    assert (layout.export / "model.keras").is_file() and layout.metrics.is_file() and layout.has_final()
    plan = json.loads(layout.plan.read_text())
    config = json.loads(layout.config.read_text())
    assert config["time_budget"] == BUDGET and config["max_epochs"] == plan["max_epochs"] <= 8
    best = json.loads(layout.best.read_text())
    unbudgeted = sum(r["trials"] for r in hyperband_rounds(8, 3))
    assert 1 <= best["trials"] == plan["trials_run"] < unbudgeted
    assert any(line.startswith("time budget 1m: the job took") for line in lines)


def test_the_budgeted_job_ends_within_its_budget_having_used_most_of_it(budgeted):
    plan = json.loads(RunLayout(budgeted[0]).plan.read_text())
    # The job's own clock (from the command's start here, in-process; from the process's start on the command line).
    # Most of it: more than 60% (bench/time_budget.py measures the 85-100% target on real films; at 32 px the
    # stages after the retrain are priced high, their traces weighing more than their passes over 14 films).
    assert 0.6 * BUDGET <= plan["finished"] <= BUDGET and plan["within_budget"]
    # Planned after the extraction, revised after the search and checked after the retrain, each in plan.json.
    boundaries = plan["boundaries"]
    assert [b["after"] for b in boundaries] == ["data and extraction", "search", "retrain"]
    assert [b["elapsed"] for b in boundaries] == sorted(b["elapsed"] for b in boundaries)
    assert boundaries[1]["decided"].startswith("retrain top ")
    assert plan["retrain_chosen"]["top_k"] <= min(3, plan["trials_run"])
    assert set(plan["tail_took"]) == {"final model", "evaluate", "export"}


def test_a_resume_with_another_budget_or_none_is_refused_in_one_line(budgeted, demo_data):
    run_dir, _ = budgeted
    before = tree_digest(run_dir)
    for other in (("--time-budget", "5m"), ()):
        result = run_cli("search", "--data", demo_data, "--run-dir", run_dir, *FLAGS, *other)
        error_line(result, "time_budget")
    assert tree_digest(run_dir) == before


@pytest.mark.parametrize("value", ["soon", "0s", "1h-5m"])
def test_a_bad_duration_is_one_line_and_writes_nothing(tmp_path, value):
    result = run_cli("search", "--run-dir", tmp_path / "run", "--time-budget", value)
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "--time-budget" in errors[0] and value in errors[0], result.output
    assert not (tmp_path / "run").exists()


def test_what_the_budget_cannot_plan_is_refused_before_anything_is_written(tmp_path):
    result = run_cli("search", "--run-dir", tmp_path / "run", "--time-budget", "5m", "--workers", 2)
    error_line(result, "--time-budget", "--workers")
    assert not (tmp_path / "run").exists()


def test_the_same_command_again_resumes_the_planned_search(tmp_path, demo_data):
    run_dir = tmp_path / "run"
    command = ("search", "--data", demo_data, "--run-dir", run_dir, *FLAGS, "--no-retrain", "--time-budget", "40s")
    first = run_cli(*command)
    assert first.exit_code == 0, first.output
    layout = RunLayout(run_dir)
    planned = json.loads(layout.config.read_text())["max_epochs"]
    trials = json.loads(layout.best.read_text())["trials"]
    again = run_cli(*command)  # --max-epochs 8 again: the saved Hyperband's max_epochs is kept, not re-planned
    assert again.exit_code == 0, again.output
    assert json.loads(layout.config.read_text())["max_epochs"] == planned
    plan = json.loads(layout.plan.read_text())
    assert plan["resumed"] and plan["max_epochs"] == planned
    assert json.loads(layout.best.read_text())["trials"] >= trials
