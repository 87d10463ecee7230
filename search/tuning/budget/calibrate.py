"""``--time-budget``'s calibration: a few epochs of the dearest and the cheapest trial shape, timed on this machine."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

import keras
import keras_tuner
import numpy as np

from cxr_tuner.data import shift
from cxr_tuner.hypermodels.cutting import is_cacheable
from cxr_tuner.hypermodels.registry import Backbones
from cxr_tuner.hypermodels.space import Space
from cxr_tuner.search.tuning.budget.plan import CALIBRATION_EPOCHS, Calibration
from cxr_tuner.search.tuning.tuner import fresh_keras_state

FORWARD_FILMS = 128
"""Films of the timed forward pass, at the run's batch size (64 gave a rate 1.8x faster than evaluation's)."""
RENDER_FILMS = 16


def shapes(backbone: str, weights: str, cached_depths: int | None, space=None, *,
           specs: Backbones) -> dict[str, dict]:
    """The dearest and the cheapest trial of ``backbone`` (one of ``specs``) in ``space`` (default: the default space).

    ``cached_depths``: how many unfreeze depths train on cached activations (None:
    the backbone trains whole on images, from scratch).
    """
    space = space or Space()
    deepest, shallowest = space.max_head_depth(), int(space["head_depth"].lowest())
    common = {"backbone": backbone, "dropout": space["dropout"].lowest(),
              "learning_rate": space["learning_rate"].highest()}
    dearest = {**common, "head_depth": deepest, **{f"head_units_{i}": space.units(i).highest() for i in range(deepest)}}
    cheapest = {**common, "head_depth": shallowest,
                **{f"head_units_{i}": space.units(i).lowest() for i in range(shallowest)}}
    if cached_depths is not None and weights != "none":
        unfreeze = space.unfreeze_entry(len(specs.get(backbone).unfreeze_points))
        dearest["unfreeze_depth"] = max(0, min(cached_depths - 1, unfreeze.highest()))
        cheapest["unfreeze_depth"] = unfreeze.lowest()
    return {"dearest": dearest, "cheapest": cheapest}


def calibrate(hypermodel, cache, config, log: Callable[[str], None] = print,
              clock: Callable[[], float] = time.perf_counter) -> Calibration:
    """Times ``CALIBRATION_EPOCHS`` epochs of the dearest and the cheapest trial of each backbone.

    On the data the trials train on (cached activations, or images for backbones
    trained from scratch); the dearest winner's whole image model is also assembled
    and saved once (what each retrain fit ends with), and its forward pass over a batch
    of the run's films is timed (what evaluation and export repeat), as is the stress
    test's re-rendering of a few films. Nothing is written to the run.
    """
    specs = config.backbone_specs
    figures, found = {}, {}
    _warm_up(hypermodel, config)
    for backbone in config.backbones:
        cacheable = is_cacheable(specs.get(backbone), config.weights)
        depths = None
        if cacheable:
            depths = (len(specs.get(backbone).unfreeze_points) + 1 if cache.depths is None
                      else cache.depths.get(backbone, 0))
            depths = depths or None
        timed = {}
        for name, values in shapes(backbone, config.weights, depths, config.search_space(), specs=specs).items():
            hp = keras_tuner.HyperParameters()
            hp.values.update(values)
            fresh_keras_state(config.seed)
            started = clock()
            model = hypermodel.build(hp)
            built = clock() - started
            epochs = []

            class _Timer(keras.callbacks.Callback):
                def on_epoch_begin(self, epoch, logs=None):
                    epochs.append(clock())

                def on_epoch_end(self, epoch, logs=None):
                    epochs[-1] = clock() - epochs[-1]

            hypermodel.fit(hp, model, epochs=CALIBRATION_EPOCHS, verbose=0, callbacks=[_Timer()])
            steady = min(epochs[1:] or epochs)
            timed[name] = {"epoch": steady, "overhead": built + max(0.0, epochs[0] - steady)}
            if name == "dearest":
                timed[name].update(_image_model_seconds(hypermodel, hp, model, cache.images, config.batch_size, clock))
        figures[backbone] = timed
        found[backbone] = (f"dearest {timed['dearest']['epoch']:.2f} s/epoch, "
                           f"cheapest {timed['cheapest']['epoch']:.2f} s/epoch")
    fresh_keras_state(config.seed)
    count = len(figures)
    mean = lambda key, which: sum(f[which][key] for f in figures.values()) / count  # noqa: E731
    return Calibration(
        epoch=(mean("epoch", "dearest") + mean("epoch", "cheapest")) / 2,
        overhead=(mean("overhead", "dearest") + mean("overhead", "cheapest")) / 2,
        epoch_max=max(max(f["dearest"]["epoch"], f["cheapest"]["epoch"]) for f in figures.values()),
        overhead_max=max(f["dearest"]["overhead"] + f["dearest"]["keep"] for f in figures.values()),
        forward=max(f["dearest"]["forward"] for f in figures.values()),
        trace=max(f["dearest"]["trace"] for f in figures.values()),
        keep=max(f["dearest"]["keep"] for f in figures.values()),
        render=_render_seconds(cache.images, config.seed, clock), shapes=found)


def _warm_up(hypermodel, config) -> None:
    """One epoch of the cheapest trial first: the process's first fit pays once for what no trial pays again."""
    backbone, specs = config.backbones[0], config.backbone_specs
    hp = keras_tuner.HyperParameters()
    cached = 1 if is_cacheable(specs.get(backbone), config.weights) else None
    hp.values.update(shapes(backbone, config.weights, cached, specs=specs)["cheapest"])
    fresh_keras_state(config.seed)
    hypermodel.fit(hp, hypermodel.build(hp), epochs=1, verbose=0)


def _image_model_seconds(hypermodel, hp, model, images, batch_size: int, clock) -> dict[str, float]:
    """The dearest winner's whole image model: saved once (``keep``), a predict's first-call cost beyond
    a steady one (``trace``) and a steady forward pass per film (``forward``, the mean of two), on up to
    ``FORWARD_FILMS`` of the run's films."""
    started = clock()
    with tempfile.TemporaryDirectory() as folder:
        image_model = hypermodel.image_model(hp, model) if hasattr(hypermodel, "image_model") else model
        image_model.save(Path(folder) / "model.keras")
    keep = clock() - started
    batch = np.asarray(images[: min(len(images), FORWARD_FILMS)])
    passes = []
    for _ in range(3):  # the first traces
        started = clock()
        image_model.predict(batch, batch_size=batch_size, verbose=0)
        passes.append(clock() - started)
    steady = (passes[1] + passes[2]) / 2
    return {"keep": keep, "trace": max(0.0, passes[0] - steady), "forward": steady / len(batch)}


def _render_seconds(images, seed: int, clock) -> float:
    """Seconds to re-render one film in every stress-test family (`data.shift`), from a few of the run's films."""
    batch = np.asarray(images[: min(len(images), RENDER_FILMS)])
    started = clock()
    for family in shift.FAMILIES:
        shift.render(batch, family, seed, np.arange(len(batch)))
    return (clock() - started) / len(batch)
