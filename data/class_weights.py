"""Per-class loss weights so that a rare class counts as much as a common one."""

from typing import Sequence

import numpy as np
from sklearn.utils.class_weight import compute_class_weight

from cxr_tuner.data.errors import UserError


def class_weights(labels: Sequence[str], class_names: Sequence[str]) -> dict[str, float]:
    """scikit-learn's "balanced" weights: n_samples / (n_classes * count of the class).

    Args:
        labels: Class name per training image.
        class_names: Every class the model predicts.

    Raises:
        UserError: A class has no image in ``labels``, or a label is not a class.
    """
    unknown = sorted(set(labels) - set(class_names))
    if unknown:
        raise UserError(
            f"Label(s) {', '.join(unknown)} are not among the classes {', '.join(class_names)}; "
            "use the same class list for the split and the weights."
        )
    absent = sorted(set(class_names) - set(labels))
    if absent:
        raise UserError(
            f"Class(es) {', '.join(absent)} have no training image, so they cannot be "
            "weighted; add images of them or leave them out."
        )
    classes = np.asarray(list(class_names))
    weights = compute_class_weight("balanced", classes=classes, y=np.asarray(list(labels)))
    return {str(name): float(weight) for name, weight in zip(classes, weights)}
