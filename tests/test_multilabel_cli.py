"""A multi-label job through the command line: search to export, bad label files, predict against plain Keras."""

import json

import numpy as np
import pytest
from PIL import Image

from cxr_tuner.data import synthetic_findings
from cxr_tuner.search.engine.layout import RunLayout
from cxr_tuner.search.figures.text import figure_text
from tests.conftest import error_line, plain_keras_output, run_cli


@pytest.fixture(scope="module")
def findings_csv(tmp_path_factory):
    root = tmp_path_factory.mktemp("findings") / "data"
    synthetic_findings.write_multilabel_demo(root, n_films=160, size=32, seed=0, min_positive_patients=8)
    return root / synthetic_findings.MULTILABEL_CSV


def test_a_multilabel_job_runs_to_export_and_predict_agrees_with_plain_keras(tmp_path, findings_csv):
    run_dir = tmp_path / "run"
    other = synthetic_findings.write_multilabel_demo(tmp_path / "site_b", n_films=24, size=32, seed=4,
                                                     min_positive_patients=2) / synthetic_findings.MULTILABEL_CSV
    result = run_cli("search", "--data", findings_csv, "--run-dir", run_dir, "--backbones", "vanilla_cnn",
                     "--weights", "none", "--image-size", 32, "--tuner", "random", "--max-trials", 1,
                     "--max-epochs", 1, "--min-positive-groups", 2, "--external", other)
    assert result.exit_code == 0 and result.exception is None, result.output
    assert "task: multilabel" in result.output and "val_weighted_bce=" in result.output
    layout = RunLayout(run_dir)
    metrics = json.loads(layout.metrics.read_text())
    assert metrics["task"] == "multilabel" and set(metrics["per_label"]) == set(metrics["class_names"])
    assert "| Effusion |" in (layout.report / "report.md").read_text()
    # The external set: its macro AUC beside the test split's, each with the stress test's macro AUC per family.
    own = json.loads((layout.report / "external-labels" / "metrics.json").read_text())
    assert metrics["external"]["labels"]["figures"]["macro_roc_auc"] == own["macro_auc"] and own["n"] == 24
    for found in (metrics, own):
        assert found["stress"]["figures"][0] == "macro ROC AUC" and len(found["stress"]["families"]) == 8
    assert f"| labels | 24 | {figure_text(own['macro_auc'])} |" in (layout.report / "report.md").read_text()
    card = json.loads((layout.export / "model_card.json").read_text())
    assert card["task"] == "multilabel" and set(card["thresholds"]) == set(card["class_names"])
    film = tmp_path / "film.png"
    Image.fromarray(np.full((32, 32), 90, "uint8")).save(film)
    predicted = run_cli("predict", layout.export / "model.keras", film)
    assert predicted.exit_code == 0, predicted.output
    entry = json.loads(predicted.output.splitlines()[0])  # JSON Lines
    plain = plain_keras_output(layout.export / "model.keras", tmp_path, pixel=90)["output"][0]
    assert [entry["findings"][n]["probability"] for n in card["class_names"]] == pytest.approx(plain, abs=1e-5)
    for name in card["class_names"]:
        finding = entry["findings"][name]
        assert finding["called"] == (finding["probability"] >= card["thresholds"][name])
        assert (name in entry["decision"]) == finding["called"]


@pytest.mark.parametrize("edit, phrases", [
    (lambda text: text.replace(",0,", ",7,", 1), ("value '7'",)),
    (lambda text: text.replace("images/film-0001.png", "images/missing.png"), ("do not exist",)),
    (lambda text: text.replace("path,", "file,", 1), ("path",)),
])
def test_a_bad_label_file_is_one_line_and_writes_nothing(tmp_path, findings_csv, edit, phrases):
    bad = findings_csv.parent / f"bad-{abs(hash(phrases))}.csv"
    bad.write_text(edit(findings_csv.read_text()))
    run_dir = tmp_path / "run"
    result = run_cli("search", "--data", bad, "--run-dir", run_dir, "--task", "multilabel")
    error_line(result, *phrases)
    assert not run_dir.exists()


def test_an_empty_label_set_is_refused_before_any_work(tmp_path, findings_csv):
    bad = findings_csv.parent / "no-positive.csv"
    lines = findings_csv.read_text().splitlines()
    header = lines[0].split(",")
    zeroed = [",".join(cell if i in (0, len(header) - 1) else "0" for i, cell in enumerate(row.split(",")))
              for row in lines[1:]]
    bad.write_text("\n".join([lines[0], *zeroed]) + "\n")
    run_dir = tmp_path / "run"
    error_line(run_cli("search", "--data", bad, "--run-dir", run_dir))
    assert not run_dir.exists()
