"""Retrain choices decided on validation, cheap variants first.

Before the winners are retrained, the rank-1 configuration is trained a few ways
on the cached activations (seconds each, where training on images takes minutes):
as searched, with the learning rate decayed when validation stalls, and with one
block more unfrozen at a lower rate. The variant with the lowest class-weighted
validation loss is what every winner is retrained with; the figures are printed
and kept in ``winners/summary.json``. Backbones trained from scratch have no
cache, so their winners are retrained as searched.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the table imports no Keras: `cxr-tuner space` names the variants without loading TensorFlow
    import keras_tuner

    from cxr_tuner.hypermodels.registry import Backbones

LR_DECAY_FACTOR = 0.3
EXTRA_BLOCK_LR_FACTOR = 0.3


@dataclasses.dataclass(frozen=True)
class Variant:
    """One way to retrain a configuration.

    Attributes:
        name: What it is, as printed.
        key: Its name in a space file's ``[retrain] variants``.
        lr_decay: Multiply the learning rate by ``LR_DECAY_FACTOR`` after an epoch
            without a better validation loss (``ReduceLROnPlateau``).
        extra_block: Unfreeze one block more than the search chose, at
            ``EXTRA_BLOCK_LR_FACTOR`` times its learning rate.
    """

    name: str
    key: str = ""
    lr_decay: bool = False
    extra_block: bool = False

    def hyperparameters(self, hp: keras_tuner.HyperParameters) -> keras_tuner.HyperParameters:
        """``hp`` as this variant trains it (a copy)."""
        import keras_tuner

        hp = keras_tuner.HyperParameters.from_config(hp.get_config())
        if self.extra_block:
            hp.values["unfreeze_depth"] = hp.values["unfreeze_depth"] + 1
            hp.values["learning_rate"] = hp.values["learning_rate"] * EXTRA_BLOCK_LR_FACTOR
        return hp

    def callbacks(self, objective: str) -> list:
        """What the variant adds to a fit: the learning-rate decay on the run's ``objective``."""
        if not self.lr_decay:
            return []
        import keras

        return [keras.callbacks.ReduceLROnPlateau(objective, factor=LR_DECAY_FACTOR, patience=1, mode="min",
                                                  min_lr=1e-6, verbose=0)]


AS_SEARCHED = Variant("as searched", "as_searched")
LR_DECAY = Variant("lr decay", "lr_decay", lr_decay=True)
ONE_BLOCK_MORE = Variant("one block more, lower lr, lr decay", "one_block_more", lr_decay=True, extra_block=True)
VARIANTS = (AS_SEARCHED, LR_DECAY, ONE_BLOCK_MORE)


def first(allowed=None) -> Variant:
    """The variant every winner retrains with when none is chosen: as searched, else the first allowed."""
    keys = allowed or [v.key for v in VARIANTS]
    return AS_SEARCHED if AS_SEARCHED.key in keys else next(v for v in VARIANTS if v.key == keys[0])


def candidates(hp: keras_tuner.HyperParameters, weights: str, allowed=None, *, specs: Backbones) -> list[Variant]:
    """The variants worth trying for ``hp`` among ``allowed`` keys (None: all): one block more only where there
    is a block to unfreeze, and only as searched for a backbone trained from scratch (``specs``: the run's backbones)."""
    from cxr_tuner.hypermodels.cutting import is_cacheable

    spec = specs.get(hp.values["backbone"])
    keys = allowed or [v.key for v in VARIANTS]
    if not is_cacheable(spec, weights):
        return [AS_SEARCHED]
    variants = [v for v in (AS_SEARCHED, LR_DECAY) if v.key in keys]
    if ONE_BLOCK_MORE.key in keys and hp.values.get("unfreeze_depth", 0) < len(spec.unfreeze_points):
        variants.append(ONE_BLOCK_MORE)
    return variants or [AS_SEARCHED]
