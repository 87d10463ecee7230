"""The stress test scores the model on each family's re-rendering of the evaluated films."""

import numpy as np
import pytest
from sklearn.metrics import f1_score

from cxr_tuner.data import shift
from cxr_tuner.search.engine.single_label_task import SingleLabel
from cxr_tuner.search.engine.task_base import Films
from cxr_tuner.search.evaluation.stress import stress_test
from cxr_tuner.search.figures.shift_report import STRESS_HEADING, stress_line, stress_markdown

NAMES = ["COVID", "Normal", "Viral_Pneumonia"]
LEVELS = np.array([40.0, 128.0, 215.0])  # each class's exposure: the one cue this model reads


def _exposure_model(images: np.ndarray) -> np.ndarray:
    """Calls the class whose exposure is nearest the film's mean intensity."""
    means = images.reshape(len(images), -1).mean(axis=1)
    return np.eye(3)[np.abs(means[:, None] - LEVELS).argmin(axis=1)]


def test_stress_figures_are_the_models_on_each_familys_rendering():
    labels = np.repeat(np.arange(3), 20)
    images = np.broadcast_to(LEVELS[labels, None, None, None], (60, 32, 32, 1)).astype(np.uint8)
    films = Films(images, labels, [f"f{i}.png" for i in range(60)], [""] * 60, [""] * 60)
    probs = _exposure_model(images)
    calls = []

    def predict(batch):
        calls.append(len(batch))
        return _exposure_model(batch)

    stress, forward = stress_test(predict, SingleLabel(), films, probs, NAMES, {}, seed=3)
    assert calls == [60 * len(shift.FAMILIES)]  # every family's rendering in one call into the model
    assert 0 < forward < stress["seconds"]
    # In chunks (of 2 films here, as a large set is), every family's figures are the same.
    chunked, _ = stress_test(predict, SingleLabel(), films, probs, NAMES, {}, seed=3, chunk=2 * len(shift.FAMILIES))
    assert calls[1:] == [2 * len(shift.FAMILIES)] * 30 and chunked["families"] == stress["families"]
    assert list(stress["families"]) == list(shift.FAMILIES)
    assert stress["as_filmed"]["headline"]["value"] == 1.0
    for family, row in stress["families"].items():
        rendered = shift.render(images, family, 3, np.arange(60))
        expected = f1_score(labels, _exposure_model(rendered).argmax(axis=1), average="macro")
        assert row["headline"]["value"] == pytest.approx(expected), family
    # A new tone curve moves the exposure this model reads; a uniform film re-encoded stays put.
    assert stress["families"]["window_gamma"]["headline"]["value"] < 1.0
    assert stress["families"]["jpeg"]["headline"]["value"] == 1.0
    worst = stress["worst_family"]
    assert stress["families"][worst]["headline"]["value"] == min(
        row["headline"]["value"] for row in stress["families"].values())
    assert f"worst of 8 re-renderings: {worst}, macro F1" in stress_line(stress)
    table = stress_markdown(stress)
    assert table.startswith(f"## {STRESS_HEADING}") and f"Worst: **{worst}**" in table
    assert all(f"| {family} | {shift.DESCRIPTIONS[family]} |" in table for family in shift.FAMILIES)
