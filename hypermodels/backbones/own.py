"""A backbone of one's own: a ``.keras`` file, checked in one-line errors, built flat with its own weights."""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path

import keras

from cxr_tuner.data.errors import UserError
from cxr_tuner.hypermodels import discovery
from cxr_tuner.hypermodels.backbones.builtin import BACKBONES
from cxr_tuner.hypermodels.backbones.spec import BackboneSpec, file_safe
from cxr_tuner.hypermodels.compat import keras_compat
from cxr_tuner.hypermodels.preprocess import MODES

RESERVED_LAYERS = ("image", "grey_to_rgb", "preprocess", "head_pool", "head_dropout", "predictions")
"""Layer names the classifier puts around a backbone (and ``head_dense_<i>``, ``head_dropout_<i>``)."""


@functools.cache
def _load(path: str, stamp: tuple[int, int]) -> keras.Model:
    """The model in ``path`` as a functional graph (cached per file version: ``stamp`` is its mtime and size).

    A Sequential model becomes the functional one of its layers; a subclassed one has no graph to cut.
    """
    model = keras.saving.load_model(path, compile=False)
    if isinstance(model, keras.Sequential):
        model = keras.Model(model.inputs[0] if len(model.inputs) == 1 else model.inputs, model.outputs, name=model.name)
    if not keras_compat.is_functional(model):
        raise TypeError(f"it is a subclassed model ({type(model).__name__}), not a functional or Sequential one")
    return model


def _loaded(path: str) -> keras.Model:
    stat = Path(path).stat()
    return _load(path, (stat.st_mtime_ns, stat.st_size))


@dataclasses.dataclass(frozen=True)
class FileBackbone:
    """The constructor of a backbone of one's own: the file's layers, rebuilt on ``input_tensor``.

    The copy's layers sit flat in the caller's graph (no nested model), so
    ``model.get_layer(cut).output`` and Grad-CAM work as for ``keras.applications``
    models. Honours their contract: ``weights`` None starts the same architecture
    from random values, ``"imagenet"`` or the file itself from the file's weights,
    another path loads that weights file.

    Attributes:
        path: The ``.keras`` file.
        output_layer: The layer the backbone ends at (its last 4-D one: a head in the file is left out).
    """

    path: str
    output_layer: str

    def __call__(self, include_top=False, weights=None, input_tensor=None, input_shape=None, **kwargs):
        if include_top:
            raise ValueError("A backbone of one's own has no top; the classifier adds the head.")
        source = _loaded(self.path)
        trunk = keras.Model(source.inputs[0], source.get_layer(self.output_layer).output)
        inputs = input_tensor if input_tensor is not None else keras.Input(input_shape or source.inputs[0].shape[1:])
        # Fresh copies of the layers called on ``inputs`` (what clone_model does inside; its model
        # would re-clone the graph onto a new input, since ``inputs`` is not an Input).
        clones = []

        def fresh(layer):
            config = layer.get_config()
            config.pop("dtype", None)  # compute in the caller's policy (--precision), as an application does
            clones.append(layer.__class__.from_config(config))
            return clones[-1]

        outputs = keras_compat.run_through_graph(trunk, inputs, fresh)
        sources = keras.utils.get_source_inputs(inputs) if input_tensor is not None else inputs
        model = keras.Model(sources, outputs, name=file_safe(Path(self.path).stem))
        if weights is not None and weights != "imagenet" and Path(weights).suffix != ".keras":
            model.load_weights(weights)
        elif weights is not None:
            origin = source if weights in ("imagenet", self.path) else keras.saving.load_model(weights, compile=False)
            for layer in clones:
                if layer.weights:
                    layer.set_weights(origin.get_layer(layer.name).get_weights())
        return model


def own_backbone(name: str, file, preprocess: str, cuts, last_conv_layer: str | None = None) -> BackboneSpec:
    """The spec of a backbone of one's own, checked: a ``.keras`` file, its cut layers (top down) and preprocessing.

    Args:
        name: Its backbone name (letters, digits, ``_``; not a registry name or ``keras:...``).
        file: The ``.keras`` model file; its input takes 3 channels (our preprocessing
            turns the grey image into 3 equal channels). A head in it is left out: the
            backbone ends at its last 4-D layer.
        preprocess: One of ``hypermodels.preprocess.MODES``: what its weights expect.
        cuts: Layer names, top down, that unfreeze depth 1, 2, ... trains above: each
            a single 4-D output that every path from the input passes through.
        last_conv_layer: Grad-CAM's layer; by default its last 4-D layer.

    Raises:
        UserError: One line naming the entry and what is allowed, for a bad name, a
            missing or unloadable file, an unknown mode or a cut that cannot be one.
    """
    where = f"backbone {name!r}"
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
        raise UserError(f"{where}: a backbone name is a letter followed by letters, digits or _.")
    if name in BACKBONES:
        raise UserError(f"{where}: the registry already has a backbone of that name; choose another name "
                        f"(taken: {', '.join(BACKBONES)}).")
    if preprocess not in MODES:
        raise UserError(f"{where}: preprocess {preprocess!r} is unknown; expected one of {', '.join(MODES)}.")
    path = Path(file).expanduser().resolve()
    if not path.is_file() or path.suffix != ".keras":
        raise UserError(f"{where}: file {file} {'is not a .keras file' if path.is_file() else 'does not exist'}; "
                        "give the path of a model saved with model.save('....keras').")
    try:
        model = _loaded(str(path))
    except Exception as error:  # Keras raises many kinds on a damaged or foreign file
        reason = " ".join(str(error).split())[:160]
        raise UserError(f"{where}: file {file} does not load as a Keras model ({type(error).__name__}: {reason}); "
                        "give a model saved with model.save('....keras') whose layers are built-in Keras ones.") from None
    if len(model.inputs) != 1 or model.inputs[0].shape[-1] != 3:
        raise UserError(f"{where}: the model in {file} must take one image input of 3 channels "
                        f"(its inputs: {[tuple(t.shape) for t in model.inputs]}); the grey image becomes 3 equal channels.")
    try:
        output = discovery.find_last_conv_layer(model, stable_names=True)
    except ValueError:
        raise UserError(f"{where}: the model in {file} has no named layer with a 4-D (spatial) output.") from None
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    clash = [layer.name for layer in layers
             if layer.name in RESERVED_LAYERS or re.fullmatch(r"head_(dense|dropout)_\d+", layer.name)]
    if clash:
        raise UserError(f"{where}: layer names {', '.join(clash)} in {file} are the classifier's own; "
                        f"rename them (reserved: {', '.join(RESERVED_LAYERS)}, head_dense_<i>, head_dropout_<i>).")
    last_conv_layer = last_conv_layer or output
    _check_spatial(model, where, "last_conv_layer", last_conv_layer)
    cuts = tuple(cuts)
    order, _ = discovery.layer_graph(model)
    position = {layer.name: i for i, layer in enumerate(order)}
    articulation = {layer.name for layer in discovery.articulation_layers(model, model.get_layer(output))}
    for cut in cuts:
        _check_spatial(model, where, "cut", cut)
        if cut not in articulation or position[cut] >= position[output]:
            raise UserError(f"{where}: cut {cut!r} is not a layer below {output!r} that every path from the input "
                            "passes through (a branch bypasses it); a cut must be a block boundary such as a "
                            "residual add or the layer after it.")
    if [position[c] for c in cuts] != sorted((position[c] for c in cuts), reverse=True) or len(set(cuts)) < len(cuts):
        raise UserError(f"{where}: cuts must be distinct and listed from the top down; in this model's order: "
                        f"{sorted(cuts, key=position.get, reverse=True)}.")
    rows = model.inputs[0].shape[1]
    return BackboneSpec(name, FileBackbone(str(path), output), preprocess, rows or 224, 32, last_conv_layer,
                        cuts, None, str(path))


def _check_spatial(model: keras.Model, where: str, what: str, layer_name: str) -> None:
    """Refuses ``layer_name`` unless it is a layer of ``model`` itself with one 4-D output."""
    try:
        layer = model.get_layer(layer_name)
    except ValueError:
        raise UserError(f"{where}: {what} {layer_name!r} is not a layer of the model "
                        "(`model.summary()` lists its layers; a layer inside a nested model cannot be one).") from None
    if not discovery.usable(model, layer, stable_names=True) or not discovery.single_4d(layer):
        raise UserError(f"{where}: {what} {layer_name!r} must be a layer with one 4-D (batch, height, width, "
                        f"channels) output, not a nested model or a layer Keras named automatically.")

