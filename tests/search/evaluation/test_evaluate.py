"""Evaluate: the figures, pictures and report a person reads, on the test split or an external set."""

import csv
import json
import shutil

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from cxr_tuner.data import shift
from cxr_tuner.data.errors import UserError
from cxr_tuner.search.engine.layout import RunLayout
from cxr_tuner.search.engine.config import load_config
from cxr_tuner.search.evaluation.evaluate import evaluate
from cxr_tuner.search.figures.shift_report import STRESS_HEADING

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _predictions(report_dir):
    with open(report_dir / "predictions.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_metrics_match_sklearn_on_the_written_test_predictions(evaluated_run):
    report_dir = RunLayout(evaluated_run).report
    metrics = json.loads((report_dir / "metrics.json").read_text())
    rows = _predictions(report_dir)
    names = metrics["class_names"]
    y_true = [names.index(r["true"]) for r in rows]
    y_pred = [names.index(r["predicted"]) for r in rows]
    config = load_config(evaluated_run)
    assert metrics["n"] == len(rows) == json.loads(config.layout.findings.read_text())["counts"]["test"]
    assert metrics["accuracy"]["value"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert metrics["macro_f1"]["value"] == pytest.approx(
        f1_score(y_true, y_pred, labels=np.unique(y_true), average="macro", zero_division=0))
    assert metrics["confusion_matrix"]["matrix"] == confusion_matrix(y_true, y_pred, labels=range(3)).tolist()
    probs = np.array([[float(r[f"p_{n}"]) for n in names] for r in rows])
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    for figure in ("accuracy", "macro_f1", "covid_sensitivity", "covid_specificity"):
        assert "ci95" in metrics[figure]
    assert {"tp", "fp", "tn", "fn"} <= set(metrics["per_class"]["COVID"]) and "value" in metrics["ece"]


def _has_stress_table(metrics, report_md):
    """Every family's row in metrics.json's stress entry and in the report's section."""
    assert list(metrics["stress"]["families"]) == list(shift.FAMILIES)
    assert metrics["stress"]["n"] == metrics["n"] and metrics["stress"]["worst_family"] in shift.FAMILIES
    section = report_md.split(f"## {STRESS_HEADING}")[1].split("\n## ")[0]
    return all(f"| {family} | {shift.DESCRIPTIONS[family]} |" in section for family in shift.FAMILIES)


def test_report_links_pictures_and_galleries_that_exist(evaluated_run):
    report_dir = RunLayout(evaluated_run).report
    text = (report_dir / "report.md").read_text()
    linked = [line.split("](")[1].rstrip(")") for line in text.splitlines() if "](" in line]
    assert {"training_curves.png", "confusion_matrix.png", "roc.png"} <= set(linked)
    galleries = [link for link in linked if link.startswith("gradcam/")]
    assert galleries
    for link in linked:
        assert (report_dir / link).read_bytes().startswith(PNG_SIGNATURE)
    assert _has_stress_table(json.loads((report_dir / "metrics.json").read_text()), text)


def test_external_set_with_a_class_missing_is_evaluated_in_its_own_folder(retrained_run, demo_data, tmp_path):
    external = tmp_path / "hospital_b"
    for name in ("COVID", "Normal"):
        (external / name).mkdir(parents=True)
        for image in sorted((demo_data / name).glob("*.png"))[:4]:
            shutil.copy(image, external / name / image.name)
    metrics = evaluate(load_config(retrained_run), data=str(external), log=lambda line: None)
    out = RunLayout(retrained_run).report / "external-hospital_b"
    assert metrics["n"] == 8 and json.loads((out / "metrics.json").read_text())["n"] == 8
    assert metrics["per_class"]["Viral_Pneumonia"]["support"] == 0
    assert metrics["roc_auc"]["per_class"]["Viral_Pneumonia"] is None
    assert _has_stress_table(metrics, (out / "report.md").read_text())
    assert metrics["stress"]["as_filmed"]["worst"]["of"] in ("COVID", "Normal")  # a class the set holds


def test_external_set_with_an_unknown_class_is_a_user_error(retrained_run, demo_data, tmp_path):
    external = tmp_path / "other"
    for name in ("COVID", "Tuberculosis"):
        (external / name).mkdir(parents=True)
        shutil.copy(next((demo_data / "COVID").glob("*.png")), external / name / "a.png")
    with pytest.raises(UserError, match="Tuberculosis"):
        evaluate(load_config(retrained_run), data=str(external), out=tmp_path / "out", log=lambda line: None)


def test_report_opens_with_the_verdict_and_folds_in_an_external_set(evaluated_run, demo_data, tmp_path):
    report_dir = evaluated_run / "report"
    found = json.loads((report_dir / "shortcuts.json").read_text())
    assert {"winner_chest_hidden", "winner_chest_only", "fresh_head_chest_hidden"} <= set(found["probe"])
    assert set(found["energy"]["per_class"]) == {"COVID", "Normal", "Viral_Pneumonia"}
    assert (report_dir / "gradcam" / "least-in-chest.png").read_bytes().startswith(PNG_SIGNATURE)
    text = (report_dir / "report.md").read_text()
    assert text.split("\n\n")[1].startswith("<!-- verdict -->\n## Verdict")
    assert "Fresh head on chest-hidden features" in text and "Grad-CAM energy inside the chest box" in text
    external = tmp_path / "hospital_c"
    for name in ("COVID", "Normal"):
        (external / name).mkdir(parents=True)
        for image in sorted((demo_data / name).glob("*.png"))[:3]:
            shutil.copy(image, external / name / image.name)
    evaluate(load_config(evaluated_run), data=str(external), log=lambda line: None)
    verdict = (report_dir / "report.md").read_text().split("<!-- /verdict -->")[0]
    assert "| test split (same sources) |" in verdict and "| hospital_c | 6 |" in verdict
