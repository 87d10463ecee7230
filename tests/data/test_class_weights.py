"""Balanced class weights."""

import numpy as np
import pytest
from sklearn.utils.class_weight import compute_class_weight

from cxr_tuner.data.errors import UserError
from cxr_tuner.data.class_weights import class_weights


def test_balanced_weights_match_sklearn_and_favour_the_rare_class():
    labels = ["Normal"] * 90 + ["COVID"] * 10 + ["Viral_Pneumonia"] * 40
    names = ["COVID", "Normal", "Viral_Pneumonia"]
    weights = class_weights(labels, names)
    expected = compute_class_weight("balanced", classes=np.array(names), y=np.array(labels))
    assert list(weights) == names
    assert np.allclose([weights[n] for n in names], expected)
    assert weights["COVID"] > weights["Viral_Pneumonia"] > weights["Normal"]


def test_class_without_images_or_unknown_label_is_a_user_error():
    with pytest.raises(UserError, match="COVID"):
        class_weights(["Normal", "Normal"], ["COVID", "Normal"])
    with pytest.raises(UserError, match="Lung_Opacity"):
        class_weights(["Normal", "Lung_Opacity"], ["Normal"])
