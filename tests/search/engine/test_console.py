"""What the terminal shows: no start-up noise, rounded hyperparameters, a closing summary."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import keras_tuner
import pytest

from cxr_tuner.hypermodels.classifier import OBJECTIVE
from cxr_tuner.search.engine import console
from cxr_tuner.search import job
from cxr_tuner.search.final import retrain
from cxr_tuner.search.engine.config import new_config
from cxr_tuner.data import files
from cxr_tuner.search.evaluation import report
from cxr_tuner.search.figures import class_report
from cxr_tuner.search.figures.text import figure_text
from cxr_tuner.search.engine.layout import MODEL_STAMP, RunLayout
from cxr_tuner.search.figures.shift_report import stress_line, stress_markdown
from cxr_tuner.search.tuning.tuner import trial_line
from cxr_tuner.search.figures.text import number_text, value_text

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("value,text", [(0.30000000000000004, "0.3"), (0.000532456789, "5.3e-04"),
                                        (0.0123456, "0.0123"), (0.0, "0"), (128, "128"),
                                        ("mobilenet_025", "mobilenet_025"), (True, "True")])
def test_values_are_printed_as_a_person_reads_them(value, text):
    assert value_text(value) == text


def test_trial_line_rounds_the_hyperparameters():
    hp = keras_tuner.HyperParameters()
    hp.Choice("backbone", ["mobilenet_025"])
    hp.Float("dropout", 0.0, 0.5, step=0.1)
    hp.Float("learning_rate", 1e-4, 1e-2, sampling="log")
    hp.values.update(dropout=0.30000000000000004, learning_rate=0.000532456789)
    trial = keras_tuner.engine.trial.Trial(hp, trial_id="0007")
    trial.score = 0.123456
    line = trial_line(trial)
    assert line == ("trial 0007: val_weighted_loss=0.1235  "
                    "backbone mobilenet_025, dropout 0.3, learning_rate 5.3e-04")


def test_summary_says_where_everything_is_with_the_headline_figures(exported_run):
    lines = console.summary_lines(RunLayout(exported_run))
    text = "\n".join(lines)
    metrics = json.loads((exported_run / "report" / "metrics.json").read_text())
    assert str(exported_run / "report" / "report.html") in text
    assert f"tensorboard --logdir {exported_run / 'tensorboard'}" in text
    assert "model.keras" in text and "model.tflite" in text and "saved_model" in text
    lo, hi = metrics["accuracy"]["ci95"]
    assert any(line.split()[:1] == ["accuracy"] and f"{metrics['accuracy']['value']:.3f} [{lo:.3f}, {hi:.3f}]"
               in line for line in lines), text
    assert f"{metrics['n']} images" in text


def test_start_up_is_quiet_unless_verbose(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}

    def listing(*flags, after=()):  # backbones --keras asks Keras, so it loads TensorFlow
        return subprocess.run([sys.executable, str(ROOT / "cli.py"), *flags, "backbones", "--keras", *after],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)

    quiet, verbose = listing(), listing("--verbose")
    assert quiet.returncode == verbose.returncode == 0
    assert quiet.stderr == "", quiet.stderr
    assert "keras:MobileNet" in quiet.stdout.split()
    assert len(verbose.stderr) > 0  # TensorFlow's own start-up lines, for who asks for them
    after = listing(after=("--verbose",))  # as click and mlflow take it too
    assert after.returncode == 0 and len(after.stderr) > 0, after.stderr


def test_the_backbone_table_answers_without_loading_tensorflow():
    code = ("import sys\nfrom click.testing import CliRunner\nfrom cxr_tuner.cli import cli\n"
            "result = CliRunner().invoke(cli, ['backbones'])\n"
            "print(result.exit_code, 'tensorflow' in sys.modules, 'keras' in sys.modules)\nprint(result.output)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    status, *table = done.stdout.splitlines()
    assert status == "0 False False", done.stdout + done.stderr
    assert table[0].split()[:2] == ["name", "size"] and any(line.startswith("mobilenet_025 ") for line in table)


def test_a_missing_figure_reads_na_with_its_reason():
    assert number_text(0.12345, ".4f") == "0.1235"
    assert number_text(2.04, ".1f", unit=" s") == "2.0 s"
    assert number_text(None, ".4f", "no trial completed", " s") == "n/a (no trial completed)"
    assert number_text("0.5") == "n/a (not recorded)"  # not a number is no figure either
    assert value_text(None) == "n/a (no value)"
    assert figure_text({"value": 0.9123, "ci95": [0.88, 0.94]}) == "0.912 [0.880, 0.940]"
    assert figure_text({"value": None, "ci95": None, "reason": "no 'COVID' cases in y_true"}) \
        == "n/a (no 'COVID' cases in y_true)"
    assert figure_text(None) == "n/a (not computed)"
    assert figure_text({"value": 0.5, "ci95": [None, 0.7]}) == "0.500 [n/a (not recorded), 0.700]"


# Every function that writes a line for the terminal or the report, fed figures that are None,
# keys that are missing, or nothing at all: each line says n/a (with a reason) and none raises.
_EMPTY_FIGURE = {"value": None, "ci95": None, "reason": "no 'COVID' cases in y_true"}


def _lines_fed_missing_values(tmp_path) -> list[str]:
    config = new_config(str(tmp_path / "run"))  # the demo's backbones: both kinds, so the comparison is asked
    lines = []
    lines += console.headline_lines({})
    lines += console.headline_lines({"n": 5, "accuracy": _EMPTY_FIGURE, "macro_f1": {"value": 0.5},
                                     "roc_auc": {"macro": None}, "covid_sensitivity": _EMPTY_FIGURE})
    per_backbone = {"vanilla_cnn": {OBJECTIVE: 0.7, "hyperparameters": {"backbone": "vanilla_cnn"}},
                    "mobilenet_025": {"hyperparameters": {"backbone": "mobilenet_025"}}}  # its loss is missing
    for best in ({}, {"best": None, "trials": 3}, {"objective": {"name": OBJECTIVE}, "trials": 2,
                 "best": {"trial_id": "0001", OBJECTIVE: None, "hyperparameters": {"dropout": None}},
                 "best_per_backbone": per_backbone}):
        lines += job.best_lines(best, config)
        lines.append(console.transfer_line(best, config))
    layout = RunLayout(tmp_path / "run")
    layout.report.mkdir(parents=True)
    layout.export.mkdir()
    (layout.export / "model_card.json").write_text("{}")
    stale = tmp_path / "stale.json"  # an external set's figures of another final model
    stale.write_text(json.dumps({"n": 4, MODEL_STAMP: "another"}))
    layout.metrics.write_text(json.dumps({"n": None, "accuracy": _EMPTY_FIGURE, MODEL_STAMP: "this", "external": {
        "gone": {"metrics": str(tmp_path / "gone.json")}, "stale": {"metrics": str(stale)}}}))
    layout.best.write_text(json.dumps({"top": [{"trial_id": "0002"}]}))
    config.save()
    lines += console.summary_lines(layout, started=None)
    lines.append(retrain._mean_std_text({OBJECTIVE: {"mean": None, "std": None}, "seeds": [0]}))
    lines.append(retrain._mean_std_text({OBJECTIVE: {"mean": 0.5}, "seeds": [0, 1]}))
    lines.append(class_report.result_line({}, layout.report))
    lines.append(class_report.probe_line({}))
    undefined = {"headline": _EMPTY_FIGURE, "worst": {"of": None, "value": None}}
    stress = {"n": 0, "seed": 0, "figures": ["macro F1", "recall of the worst class"], "as_filmed": undefined,
              "families": {"jpeg": {"description": "JPEG", **undefined}}, "worst_family": None}
    lines += [stress_line(stress), *stress_markdown(stress).splitlines()]
    no_energy = {"per_class": {"COVID": {"n": 0, "mean": None, "reason": "every Grad-CAM heatmap is all zero"}},
                 "all": {"n": 0, "mean": None, "reason": "every Grad-CAM heatmap is all zero"},
                 "uniform_reference": 0.62}
    lines.append(class_report.probe_line({"probe": {"fresh_head_chest_hidden": {"accuracy": _EMPTY_FIGURE,
                                                                            "chance": None}},
                                      "energy": no_energy}))
    lines += class_report.checks_markdown({"energy": no_energy}, tmp_path).splitlines()
    lines += class_report.final_markdown({
        "calibration": {"fitted_on": "validation", "temperature": None},
        "single_vs_final": {"final_kind": "single", "members": ["1-0001"], "single_best": {},
                            "final": {"ece": None}},
        "operating_point": {"class": "COVID", "metric": "sensitivity", "target": 0.95, "how_to_apply": "p >= t",
                            "test_argmax": {}, "test": {"sensitivity": _EMPTY_FIGURE}}}).splitlines()
    return lines


def test_every_console_line_copes_with_missing_figures(tmp_path):
    lines = _lines_fed_missing_values(tmp_path)
    text = "\n".join(line for line in lines if line)
    assert "best trial: n/a (no trial completed)" in text
    assert "best trial: n/a (none of 3 trial(s) completed)" in text
    assert "best trial 0001 of 2: val_weighted_loss = n/a (not recorded)" in text
    assert "pretrained vs from scratch: n/a (no pretrained trial completed)" in text
    assert "pretrained vs from scratch: n/a (no pretrained or from-scratch trial completed)" in text
    assert "accuracy             n/a (no 'COVID' cases in y_true)" in text
    assert "test split, n/a (count not recorded) images" in text
    assert "stress test: n/a (not run: evaluated before the stress test existed)" in text
    assert "stress test: n/a (no re-rendering has a macro F1)" in text
    for name in ("gone", "stale"):  # never shown as current
        assert f"external {name}: n/a (its metrics.json is gone or of another model)" in text
    assert "± n/a (one seed) over 1 seed(s)" in text and "0.5000 ± n/a (not recorded) over 2 seed(s)" in text
    assert "Grad-CAM energy in the chest n/a (every Grad-CAM heatmap is all zero)" in text
    assert "| COVID | 0 | n/a (every Grad-CAM heatmap is all zero) | | |" in text
    assert "Temperature n/a (not recorded)" in text
    # No bare "None" and no "n/a" without its reason reaches a line.
    assert "None" not in text, text
    assert not re.search(r"n/a(?! \()", text), text


def test_the_verdict_says_why_the_grad_cam_energy_is_missing(tmp_path):
    metrics = {"n": 3, "accuracy": {"value": 0.5, "ci95": None}, "macro_f1": _EMPTY_FIGURE,
               "covid_sensitivity": _EMPTY_FIGURE, "covid_specificity": {"value": 1.0, "ci95": [1.0, 1.0]}}
    files.write_json(tmp_path / report.SHORTCUTS_FILE, {"energy": {
        "per_class": {}, "all": {"n": 0, "mean": None, "reason": "every Grad-CAM heatmap is all zero"},
        "uniform_reference": 0.62}})
    text = report.verdict_block(tmp_path, metrics)
    assert "Grad-CAM energy inside the chest box: n/a (every Grad-CAM heatmap is all zero)." in text
    assert "| test split (same sources) | 3 | 0.500 | n/a (no 'COVID' cases in y_true) |" in text


def test_transfer_line_compares_the_best_pretrained_trial_with_the_best_from_scratch(tmp_path):
    config = new_config(str(tmp_path / "run")).replace(class_names=("COVID", "Normal", "Viral"))

    def entry(trial_id, backbone, loss):
        return {"trial_id": trial_id, OBJECTIVE: loss, "hyperparameters": {"backbone": backbone, "dropout": 0.1}}

    best = {"objective": {"name": OBJECTIVE}, "trials": 9,
            "top": [entry("0004", "mobilenet_025", 0.458), entry("0005", "mobilenet_025", 0.5)],
            # The from-scratch best is not among the top few: the comparison reads each backbone's best.
            "best_per_backbone": {"mobilenet_025": entry("0004", "mobilenet_025", 0.458),
                                  "vanilla_cnn": entry("0007", "vanilla_cnn", 0.713)}}
    assert console.transfer_line(best, config) == (
        "pretrained vs from scratch: val_weighted_loss 0.4580 (trial 0004, mobilenet_025) vs 0.7130 "
        "(trial 0007, vanilla_cnn): pretrained lower by 0.2550; chance ln 3 = 1.0986")
    # A file written before best_per_backbone existed: the top few serve.
    older = {**best, "top": [*best["top"], entry("0007", "vanilla_cnn", 0.713)]}
    del older["best_per_backbone"]
    assert console.transfer_line(older, config) == console.transfer_line(best, config)
    assert console.transfer_line(best, config.replace(weights="none")) is None  # one kind: nothing to compare
    assert console.transfer_line(best, config.replace(backbones=("mobilenet_025",))) is None


def test_weights_lines_say_where_each_backbone_starts_from(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty-keras-home"))  # no cached copy: the shipped one serves
    assert console.weights_lines(new_config(str(tmp_path / "run"))) == [
        "pretrained: mobilenet_025 ImageNet weights, shipped with the package "
        "(hypermodels/assets/mobilenet_2_5_224_tf_no_top.h5)",
        "from scratch: vanilla_cnn (no pretrained weights exist for it)"]
    assert console.weights_lines(new_config(str(tmp_path / "run"), backbones=("mobilenet_025",), weights="none")) \
        == ["from scratch: mobilenet_025 (--weights none)"]
