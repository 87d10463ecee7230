"""The pictures and report.md a person reads after `evaluate`."""

import numpy as np
import pytest

from cxr_tuner.search.figures.metrics import classification_metrics, roc_curves
from cxr_tuner.search.figures import class_report
from cxr_tuner.search.evaluation.plots import plot_confusion_matrix, plot_history, plot_roc
from cxr_tuner.search.evaluation.report import write_report_md

NAMES = ["COVID", "Normal", "Viral_Pneumonia"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def predictions():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, 120)
    logits = rng.normal(size=(120, 3))
    logits[np.arange(120), y_true] += 1.5
    return y_true, np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def _assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000


def test_history_plot_writes_png_with_whatever_keys_exist(tmp_path):
    history = {
        "loss": [1.0, 0.7, 0.5], "val_loss": [1.1, 0.8, 0.9],
        "weighted_loss": [1.2, 0.8, 0.6], "val_weighted_loss": [1.3, 0.9, 1.0],
        "accuracy": [0.5, 0.7, 0.8], "val_accuracy": [0.4, 0.6, 0.6],
        "learning_rate": [1e-3, 1e-3, 1e-4],
    }
    _assert_png(plot_history(history, tmp_path / "curves" / "training_curves.png"))
    _assert_png(plot_history({"loss": [1.0, 0.5]}, tmp_path / "loss_only.png"))


def test_history_without_loss_or_accuracy_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no loss or accuracy"):
        plot_history({"learning_rate": [0.1]}, tmp_path / "x.png")


def test_confusion_and_roc_plots_write_pngs(tmp_path, predictions):
    y_true, probs = predictions
    metrics = classification_metrics(y_true, probs, NAMES, n_bootstrap=50)
    _assert_png(plot_confusion_matrix(metrics["confusion_matrix"]["matrix"], NAMES, tmp_path / "cm.png"))
    _assert_png(plot_roc(roc_curves(y_true, probs, NAMES), metrics["roc_auc"]["per_class"], tmp_path / "roc.png"))


def test_confusion_plot_survives_an_empty_row(tmp_path):
    _assert_png(plot_confusion_matrix([[3, 1, 0], [0, 2, 1], [0, 0, 0]], NAMES, tmp_path / "cm.png"))


def test_report_md_holds_headline_figures_tables_and_relative_links(tmp_path, predictions):
    metrics = classification_metrics(*predictions, NAMES, n_bootstrap=50)
    (tmp_path / "report").mkdir()
    images = {"Confusion matrix": tmp_path / "report" / "confusion_matrix.png",
              "Training curves": tmp_path / "winners" / "0" / "training_curves.png"}

    text = write_report_md(tmp_path / "report" / "report.md", "Test report", class_report.report_parts(metrics), images,
                           {"Hyperparameters": "backbone: mobilenet_025"}).read_text()

    accuracy = metrics["accuracy"]
    lo, hi = accuracy["ci95"]
    assert f"| Accuracy | {accuracy['value']:.3f} | [{lo:.3f}, {hi:.3f}] |" in text
    assert f"{metrics['covid_sensitivity']['value']:.3f}" in text
    assert f"{metrics['ece']['value']:.3f}" in text
    covid = metrics["per_class"]["COVID"]
    assert f"| {covid['tp']} | {covid['fp']} | {covid['tn']} | {covid['fn']} |" in text
    assert "![Confusion matrix](confusion_matrix.png)" in text
    assert "![Training curves](../winners/0/training_curves.png)" in text
    assert "bootstrap" in text and "calibration" in text
    assert "## Hyperparameters\n\nbackbone: mobilenet_025" in text


def test_report_md_explains_undefined_figures(tmp_path):
    y_true = np.array([1, 1, 2, 2])
    probs = np.eye(3)[y_true] * 0.8 + 0.1 * (1 - np.eye(3)[y_true])
    metrics = classification_metrics(y_true, probs, NAMES, n_bootstrap=20)
    text = write_report_md(tmp_path / "report.md", "External set", class_report.report_parts(metrics), {}).read_text()
    assert "| COVID sensitivity (vs all other classes) | n/a (no 'COVID' cases in y_true) |" in text
