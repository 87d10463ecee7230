"""Shortcut probes on phantoms whose label is a corner marker or only the lung lesion."""

import json

import keras
import keras_tuner
import numpy as np
import pytest

from cxr_tuner.data import synthetic
from cxr_tuner.hypermodels.classifier import XrayClassifier
from cxr_tuner.hypermodels.registry import BUILT_IN
from cxr_tuner.search.engine.layout import MODEL_STAMP
from cxr_tuner.search.engine.single_label_task import SingleLabel
from cxr_tuner.search.engine.task_base import Films
from cxr_tuner.search.evaluation import gradcam, probe, report, shortcuts
from cxr_tuner.search.figures import class_report
from cxr_tuner.search.figures.metrics import classification_metrics

SIZE = 64
CLASSES = list(synthetic.CLASS_NAMES)


@pytest.fixture(scope="module")
def trained():
    """Per phantom variant: (model, train images, train labels, test images, test labels).

    A vanilla_cnn, 10 epochs on 180 phantoms at 64 px, tested on 60 others.
    """
    models = {}
    for signal in synthetic.SIGNALS:
        keras.utils.set_random_seed(0)
        images, labels = synthetic.phantom_arrays(80, SIZE, seed=1, signal=signal)
        test = np.arange(len(labels)) % 4 == 0
        model = XrayClassifier(3, SIZE, ("vanilla_cnn",), "none").build(keras_tuner.HyperParameters())
        model.fit(images[~test], keras.utils.to_categorical(labels[~test], 3), epochs=10, batch_size=16,
                  verbose=0)
        models[signal] = (model, images[~test], labels[~test], images[test], labels[test])
    return models


def test_chest_box_holds_the_lesions_and_not_the_label_markers():
    mask = probe.chest_mask(SIZE)
    for index, label in enumerate(CLASSES):
        rng = np.random.default_rng([0, index])
        _, lesion = synthetic.phantom(label, rng, SIZE)
        assert not (lesion & ~mask).any()
        marker = synthetic.phantom(label, np.random.default_rng(1), SIZE, "marker")[0]
        plain = synthetic.phantom("Normal", np.random.default_rng(1), SIZE, "marker")[0] if label != "Normal" else None
        hidden = probe.hide_chest(marker[None, ..., None])[0, ..., 0]
        assert (hidden[mask] == hidden[mask][0]).all()  # the box is one flat fill
        assert (hidden[~mask] == marker[~mask]).all()  # the marker outside survives
        kept = probe.keep_chest(marker[None, ..., None])[0, ..., 0]
        assert (kept[mask] == marker[mask]).all() and len(np.unique(kept[~mask])) == 1
        if plain is not None:
            assert (marker != plain)[~mask].any()  # the variant's marker sits outside the box


@pytest.mark.parametrize("signal", synthetic.SIGNALS)
def test_chest_hidden_probe_far_above_chance_for_markers_near_chance_for_lesions(trained, signal):
    model, train_x, train_y, test_x, test_y = trained[signal]
    films = Films(test_x, test_y, [""] * len(test_y), [""] * len(test_y), [""] * len(test_y))
    result = probe.chest_hidden_probe(model, SingleLabel(), train_x, train_y, films, CLASSES)
    head = result["fresh_head_chest_hidden"]
    assert head["chance"] == pytest.approx(1 / 3)
    if signal == "marker":
        assert head["accuracy"]["ci95"][0] > 0.8
    else:
        assert head["accuracy"]["value"] < 0.55
        assert result["winner_chest_only"]["accuracy"]["value"] > result["winner_chest_hidden"]["accuracy"]["value"]


def test_gradcam_energy_in_chest_higher_for_lesion_model_than_marker_model(trained):
    """At the registry's layer (4x4 at 64 px); the measured shares are in docs/shortcuts.md."""
    means = {}
    for signal, (model, _, _, test_x, test_y) in trained.items():
        explainer = gradcam.gradcam_model(model, gradcam.default_layer(model, BUILT_IN))
        shares = shortcuts.energy_shares(explainer, test_x)
        means[signal] = class_report.energy_summary(shares, test_y, CLASSES, probe.chest_area())["all"]["mean"]
    assert means["lesion"] > means["marker"] + 0.05


def _metrics(rng, n, accuracy):
    labels = rng.integers(0, 3, n)
    right = rng.random(n) < accuracy
    predicted = np.where(right, labels, (labels + 1) % 3)
    return classification_metrics(labels, np.eye(3)[predicted] * 0.8 + 0.2 / 3, CLASSES, n_bootstrap=50)


def test_external_sets_fold_into_the_reports_verdict(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "metrics.json").write_text(json.dumps(_metrics(rng, 200, 0.95)))
    (tmp_path / "report.md").write_text(f"# Report\n\n{report.verdict_block(tmp_path)}\n\nrest\n")
    assert "No sign of shortcuts" in (tmp_path / "report.md").read_text()
    (tmp_path / "external-nih").mkdir()
    (tmp_path / "external-nih" / "metrics.json").write_text(json.dumps(_metrics(rng, 100, 0.6)))
    report.refresh_verdict(tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert text.startswith("# Report") and text.rstrip().endswith("rest")
    assert "| nih | 100 |" in text and "drops from" in text and text.count(report.VERDICT_START) == 1
    # A set scored with another final model (the run was assembled again since) is not shown as current.
    (tmp_path / "external-old").mkdir()
    (tmp_path / "external-old" / "metrics.json").write_text(json.dumps({**_metrics(rng, 50, 0.9), MODEL_STAMP: "x"}))
    report.refresh_verdict(tmp_path)
    assert "| nih | 100 |" in (tmp_path / "report.md").read_text() and "| old |" not in (tmp_path / "report.md").read_text()
