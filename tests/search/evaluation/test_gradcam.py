"""Grad-CAM: it runs on every backbone, flat or nested, and it points at the lesion."""

import keras
import keras_tuner
import numpy as np
import pytest

from cxr_tuner.data.errors import UserError
from cxr_tuner.data.synthetic import CLASS_NAMES, phantom
from cxr_tuner.hypermodels.classifier import XrayClassifier
from cxr_tuner.hypermodels.backbones.builtin import BACKBONES
from cxr_tuner.hypermodels.registry import BUILT_IN
from cxr_tuner.search.engine.single_label_task import SingleLabel
from cxr_tuner.search.engine.task_base import Films
from cxr_tuner.search.evaluation import gradcam, report

SIZE = 64
REQUIRED_SHARE = 0.8


def _size(spec):
    return max(spec.min_size, 32)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_heatmap_for_every_registered_backbone(name):
    spec = BACKBONES[name]
    keras.backend.clear_session()
    model = XrayClassifier(3, _size(spec), (name,), "none").build(keras_tuner.HyperParameters())
    assert gradcam.default_layer(model, BUILT_IN) == spec.last_conv_layer
    images = np.random.default_rng(0).integers(0, 256, (2, _size(spec), _size(spec), 1)).astype("uint8")
    maps = gradcam.heatmaps(gradcam.gradcam_model(model, spec.last_conv_layer), images)
    assert maps.shape[0] == 2 and np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1


@pytest.mark.parametrize("name", list(BACKBONES))
def test_nested_backbone_is_explained_without_graph_disconnected(name):
    """A user's model with the keras.applications model as one layer: no 'Graph disconnected'."""
    spec, size = BACKBONES[name], _size(BACKBONES[name])
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    base = spec.constructor(include_top=False, weights=None, input_shape=(size, size, 3))
    # A user's chain: grey uint8 -> [0, 1] -> three channels by a 1x1 convolution -> the backbone.
    nested = keras.Sequential([keras.Input((size, size, 1), dtype="uint8"), keras.layers.Rescaling(1 / 255),
                               keras.layers.Conv2D(3, 1), base, keras.layers.GlobalAveragePooling2D(),
                               keras.layers.Dense(3, activation="softmax")])
    explainer = gradcam.gradcam_model(nested, spec.last_conv_layer)
    activations, scores = explainer(np.zeros((1, size, size, 1), "uint8"))
    assert activations.shape[1:] == base.get_layer(spec.last_conv_layer).output.shape[1:]
    assert np.allclose(keras.ops.softmax(scores), nested(np.zeros((1, size, size, 1), "uint8")), atol=1e-5)


def test_traced_heatmaps_are_the_eager_ones():
    """The evaluation's traced Grad-CAM (one trace for every batch) explains as the eager one does."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    model = XrayClassifier(3, 32, ("vanilla_cnn",), "none").build(keras_tuner.HyperParameters())
    explainer = gradcam.gradcam_model(model, gradcam.default_layer(model, BUILT_IN))
    images = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 1)).astype("uint8")
    traced = gradcam.Traced(explainer)
    for class_index in (None, 2, np.array([0, 1, 2, 1, 0])):
        assert np.allclose(gradcam.all_heatmaps(traced, images, class_index, batch=2),
                           gradcam.heatmaps(explainer, images, class_index), atol=1e-5)


def test_unknown_layer_is_a_user_error_naming_the_layers():
    model = XrayClassifier(3, 32, ("vanilla_cnn",), "none").build(keras_tuner.HyperParameters())
    with pytest.raises(UserError, match="no layer 'conv99'.*--layer"):
        gradcam.gradcam_model(model, "conv99")


def _phantoms(n_per_class, seed):
    images, masks, labels = [], [], []
    for index, name in enumerate(CLASS_NAMES):
        for i in range(n_per_class):
            image, mask = phantom(name, np.random.default_rng([seed, index, i]), SIZE)
            images.append(image)
            masks.append(mask)
            labels.append(index)
    return np.stack(images)[..., None], np.stack(masks), np.array(labels)


def _share_hotter_on_the_lesion(maps, masks):
    """Share of images whose heatmap is warmer, on average, over the lesion than off it."""
    warmer = []
    for heat, lesion in zip(maps, masks):
        heat, lesion = gradcam.upsample(heat, SIZE), lesion.astype(bool)
        warmer.append(heat[lesion].mean() > heat[~lesion].mean())
    return float(np.mean(warmer))


def test_heatmap_is_warmer_on_the_lesion():
    """Grad-CAM is warmer over the lesion than elsewhere on >= 80% of correctly classified sick images.

    A vanilla_cnn trained for 10 epochs on 240 phantoms at 64 px, whose class signal
    is an opacity in a known zone (COVID low and lateral, viral pneumonia high and
    medial), is explained at the registry's layer on 90 new phantoms.

    Why this measure and 80%: random heatmaps (upsampled the same way) are warmer on
    the lesion 55-61% of the time (asserted below 65%); over training seeds 0-5 the
    trained model scored 0.88-1.0. The stricter "heatmap maximum within half a 16-px
    cell of the lesion" ranged 0.10-0.79 over the same seeds: a 4x4 map of a small CNN
    reliably warms the lesion's cells but does not reliably peak there, so a test on
    the peak passed only for lucky seeds.
    """
    train_x, _, train_y = _phantoms(80, seed=1)
    test_x, test_masks, test_y = _phantoms(30, seed=2)
    keras.utils.set_random_seed(0)
    model = XrayClassifier(3, SIZE, ("vanilla_cnn",), "none").build(keras_tuner.HyperParameters())
    model.fit(train_x, keras.utils.to_categorical(train_y, 3), epochs=10, batch_size=16, verbose=0)

    predicted = model.predict(test_x, verbose=0).argmax(axis=1)
    sick = np.flatnonzero((predicted == test_y) & (test_y != CLASS_NAMES.index("Normal")))
    assert len(sick) >= 20, "the model must classify enough sick phantoms correctly to judge"
    maps = gradcam.heatmaps(gradcam.gradcam_model(model, gradcam.default_layer(model, BUILT_IN)), test_x[sick])
    masks = test_masks[sick]
    random_maps = np.random.default_rng(0).random(maps.shape)

    assert _share_hotter_on_the_lesion(random_maps, masks) < 0.65
    assert _share_hotter_on_the_lesion(maps, masks) >= REQUIRED_SHARE


def _galleries(explainer, images, labels, probs, out):
    """The single-label task's Grad-CAM pages of these films, drawn as the report draws them."""
    films = Films(images, labels, [""] * len(images), [""] * len(images), [""] * len(images))
    return {page.caption: report.draw_page(images, gradcam.heatmaps(explainer, images[page.rows], page.outputs),
                                           page, out)
            for page in SingleLabel().gallery_pages(films, probs, CLASS_NAMES, {})}


def test_galleries_are_pngs_showing_the_heatmaps(tmp_path, monkeypatch):
    model = XrayClassifier(3, 32, ("vanilla_cnn",), "none").build(keras_tuner.HyperParameters())
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 1)).astype("uint8")
    probs = model.predict(images, verbose=0)
    labels = np.array([0, 1, 2, 0, 1, 2])
    explainer = gradcam.gradcam_model(model, gradcam.default_layer(model, BUILT_IN))
    pages = _galleries(explainer, images, labels, probs, tmp_path)
    predicted = probs.argmax(axis=1)
    expected = {f"{CLASS_NAMES[c]} {'correct' if ok else 'incorrect'}" for c, ok in zip(labels, predicted == labels)}
    assert set(pages) == expected
    assert all(path.read_bytes().startswith(b"\x89PNG") for path in pages.values())
    # The pages show the heatmaps: with every heatmap cold they come out different.
    assert gradcam.heatmaps(explainer, images).max() > 0
    real = {caption: path.read_bytes() for caption, path in pages.items()}
    cold = lambda explainer, batch, class_index=None: np.zeros((len(batch), 4, 4), np.float32)  # noqa: E731
    monkeypatch.setattr(gradcam, "heatmaps", cold)
    blank = _galleries(explainer, images, labels, probs, tmp_path / "cold")
    assert all(blank[caption].read_bytes() != real[caption] for caption in real)


def test_overlay_colours_the_hot_region_warm_and_the_rest_cool():
    image = np.full((32, 32, 1), 128, np.uint8)
    heatmap = np.zeros((4, 4), np.float32)
    heatmap[0, 0] = 1.0
    picture = gradcam.overlay(image, heatmap)
    assert picture.shape == (32, 32, 3) and picture.dtype == np.uint8
    hot, cold = picture[0, 0].astype(int), picture[-1, -1].astype(int)
    assert hot[0] > hot[2] + 40 and cold[2] > cold[0] + 40  # jet: red where hot, blue where cold
