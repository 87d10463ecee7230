"""Retrain choices: the variant with the lowest validation loss wins, and only sensible ones are tried."""

import keras_tuner

from cxr_tuner.hypermodels import variants
from cxr_tuner.hypermodels.registry import BUILT_IN


def _hp(backbone="mobilenet_025", depth=1, learning_rate=1e-3):
    hp = keras_tuner.HyperParameters()
    hp.values.update(backbone=backbone, unfreeze_depth=depth, learning_rate=learning_rate)
    return hp


def test_one_block_more_unfreezes_one_more_at_a_lower_rate_without_changing_the_original():
    hp = _hp(depth=1, learning_rate=1e-3)
    extra = variants.Variant("x", extra_block=True).hyperparameters(hp)
    assert extra.values["unfreeze_depth"] == 2 and extra.values["learning_rate"] < 1e-3
    assert hp.values["unfreeze_depth"] == 1 and hp.values["learning_rate"] == 1e-3


def test_one_block_more_is_not_offered_at_the_deepest_unfreeze_point_nor_anything_without_a_cache():
    names = [v.name for v in variants.candidates(_hp(depth=3), "imagenet", specs=BUILT_IN)]
    assert names == ["as searched", "lr decay"]
    assert variants.candidates(_hp(depth=0), "none", specs=BUILT_IN) == [variants.AS_SEARCHED]
    assert variants.candidates(_hp(backbone="vanilla_cnn"), "imagenet", specs=BUILT_IN) == [variants.AS_SEARCHED]
