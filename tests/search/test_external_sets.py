"""`search --external`: the job scores each external set after the test split and reports it beside it."""

import json
import re

from cxr_tuner.data import shift
from cxr_tuner.search.engine.layout import MODEL_STAMP, RunLayout
from cxr_tuner.search.figures.shift_report import EXTERNAL_HEADING
from cxr_tuner.search.figures.text import figure_text
from tests.conftest import FAST_SEARCH, phantom_folders, run_cli


def test_a_job_with_an_external_set_writes_its_figures_beside_the_test_splits(tmp_path, demo_data):
    external = phantom_folders(tmp_path / "hospital_b", n_per_class=2)
    job = [flag for flag in FAST_SEARCH if flag != "--no-retrain"]
    run_dir = tmp_path / "run"
    result = run_cli("search", "--data", demo_data, "--run-dir", run_dir, *job, "--external", external)
    assert result.exit_code == 0 and result.exception is None, result.output
    layout = RunLayout(run_dir)
    metrics = json.loads(layout.metrics.read_text())
    own = json.loads((layout.report / "external-hospital_b" / "metrics.json").read_text())
    entry = metrics["external"]["hospital_b"]
    assert entry["n"] == own["n"] == 6 and entry["data"] == str(external)
    assert entry["figures"]["macro_f1"] == own["macro_f1"] and own[MODEL_STAMP] == metrics[MODEL_STAMP]
    assert entry["worst"] == own["stress"]["as_filmed"]["worst"]
    assert list(own["stress"]["families"]) == list(metrics["stress"]["families"]) == list(shift.FAMILIES)
    table = (layout.report / "report.md").read_text().split(f"## {EXTERNAL_HEADING}")[1].split("\n## ")[0]
    assert f"| test split (same sources) | {metrics['n']} | {figure_text(metrics['accuracy'])} |" in table
    assert f"| hospital_b | 6 | {figure_text(own['accuracy'])} | {figure_text(own['macro_f1'])} |" in table
    assert "(external-hospital_b/report.html)" in table
    summary = result.output.split("Results:")[1]
    assert "  external hospital_b, 6 images" in summary and f"macro F1             {figure_text(own['macro_f1'])}" \
        in summary.split("external hospital_b")[1]
    assert summary.count("stress test") == 2  # the test split's and the external set's
    # The default job trains against acquisition shift, and says so.
    assert re.search(r"acquisition shift: each film standardised inside the model; 2 re-rendered copies of each "
                     r"of \d+ train\+val films .*ranked on the mean of the validation films' and their copies' loss",
                     result.output), result.output
    config = json.loads(layout.config.read_text())
    assert (config["intensity"], config["shift_copies"], config["shift_objective"]) == ("standardize", 2, "mixed")
    assert list((layout.cache / "shift").glob("copies-2x*.u8"))
