"""Files -> labelled manifest -> decoded cache -> tf.data; splits, class weights, demo data.

This package knows nothing of Keras models.
"""

from cxr_tuner.data.errors import UserError

__all__ = ["UserError"]
