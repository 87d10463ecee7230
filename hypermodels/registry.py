"""The one backbone registry: a name maps to one frozen spec.

Three kinds of names resolve here, and only here: the hand-described entries of
``BACKBONES`` (the tests are parametrized over them, so a new entry is tested
the moment it is added); ``keras:NAME`` for any ``keras.applications`` model,
described from the model itself on first use (``hypermodels.discovery``); and
backbones of one's own from a ``.keras`` file, made by :func:`own_backbone` and
added with :func:`register`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import sys
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from cxr_tuner.data.errors import UserError
from cxr_tuner.hypermodels import discovery, vanilla
from cxr_tuner.hypermodels.preprocess import MODES, affine


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """Everything the project needs to know about one backbone.

    Attributes:
        name: Registry name used on the command line.
        constructor: ``keras.applications``-style callable taking
            ``include_top``, ``weights`` and ``input_tensor``.
        preprocess: Mode of ``hypermodels.preprocess.preprocess`` that
            reproduces the backbone's own ``preprocess_input``.
        default_size: Input size the ImageNet weights were trained at.
        min_size: Smallest input size the architecture accepts.
        last_conv_layer: Layer whose activations Grad-CAM explains.
        unfreeze_points: Block outputs, from the top down; unfreeze depth ``d``
            trains every layer after ``unfreeze_points[d - 1]``. Cuts sit on
            single-tensor block boundaries so activations there can be cached.
        weight_file: Callable ``size -> file name`` of the no-top ImageNet
            weights in the Keras cache, or ``None`` (a from-scratch model, or one
            whose weights are its ``file``'s).
        file: The ``.keras`` file of a backbone of one's own (:func:`own_backbone`),
            which holds its architecture and its pretrained weights.
    """

    name: str
    constructor: Callable[..., keras.Model]
    preprocess: str
    default_size: int
    min_size: int
    last_conv_layer: str
    unfreeze_points: tuple[str, ...] = ()
    weight_file: Callable[[int], str] | None = None
    file: str | None = None

    @property
    def pretrainable(self) -> bool:
        """Whether pretrained weights exist for this backbone (ImageNet's, or its own file's)."""
        return self.weight_file is not None or self.file is not None


def _fixed(file_name: str) -> Callable[[int], str]:
    return lambda size: file_name


def _mobilenet_rows(size: int, allowed: tuple[int, ...]) -> int:
    # Keras picks the 224 weights for any size it has no weights for.
    return size if size in allowed else 224


def _mobilenet_file(alpha_text: str) -> Callable[[int], str]:
    def name(size: int) -> str:
        rows = _mobilenet_rows(size, (128, 160, 192, 224))
        return f"mobilenet_{alpha_text}_{rows}_tf_no_top.h5"

    return name


def _mobilenet_v2_file(size: int) -> str:
    rows = _mobilenet_rows(size, (96, 128, 160, 192, 224))
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5"


_apps = keras.applications
BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            "resnet50", _apps.ResNet50, "caffe", 224, 32, "conv5_block3_out",
            ("conv5_block2_out", "conv5_block1_out", "conv4_block6_out"),
            _fixed("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        ),
        BackboneSpec(
            "inception_v3", _apps.InceptionV3, "tf", 299, 75, "mixed10",
            ("mixed9", "mixed8", "mixed7"),
            _fixed("inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        ),
        BackboneSpec(
            "densenet121", _apps.DenseNet121, "torch", 224, 32, "relu",
            ("conv5_block15_concat", "conv5_block12_concat", "pool4_pool"),
            _fixed("densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        ),
        BackboneSpec(
            "efficientnet_b0", _apps.EfficientNetB0, "raw", 224, 32, "top_activation",
            ("block6d_add", "block5c_add", "block4c_add"),
            _fixed("efficientnetb0_notop.h5"),
        ),
        BackboneSpec(
            "mobilenet_v2", _apps.MobileNetV2, "tf", 224, 32, "out_relu",
            ("block_15_add", "block_14_add", "block_12_add"),
            _mobilenet_v2_file,
        ),
        BackboneSpec(
            "mobilenet", _apps.MobileNet, "tf", 224, 32, "conv_pw_13_relu",
            ("conv_pw_12_relu", "conv_pw_11_relu", "conv_pw_10_relu"),
            _mobilenet_file("1_0"),
        ),
        BackboneSpec(
            "mobilenet_025", functools.partial(_apps.MobileNet, alpha=0.25),
            "tf", 224, 32, "conv_pw_13_relu",
            ("conv_pw_12_relu", "conv_pw_11_relu", "conv_pw_10_relu"),
            _mobilenet_file("2_5"),
        ),
        BackboneSpec(
            "vanilla_cnn", vanilla.VanillaCNN, "unit", 128, 16, vanilla.LAST_CONV_LAYER,
        ),
    )
}


KERAS_PREFIX = "keras:"
"""``keras:NAME`` names the ``keras.applications`` model ``NAME`` (e.g. ``keras:ConvNeXtTiny``)."""
_REGISTERED: dict[str, BackboneSpec] = {}
"""Backbones of one's own added by :func:`register` in this process."""


def get_backbone(name: str) -> BackboneSpec:
    """Returns the spec registered under ``name`` (``keras:NAME`` specs are built on first use, then cached).

    Raises:
        UserError: If no backbone has that name; the message lists the known ones.
    """
    if name in BACKBONES:
        return BACKBONES[name]
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name.startswith(KERAS_PREFIX):
        return _keras_backbone(name.removeprefix(KERAS_PREFIX))
    if name in _UNAVAILABLE:
        raise UserError(_UNAVAILABLE[name])
    known = ", ".join([*BACKBONES, *_REGISTERED])
    raise UserError(
        f"Unknown backbone {name!r}. Known backbones: {known}, or keras:NAME for any keras.applications "
        "model (`cxr-tuner backbones` lists them with their sizes, `cxr-tuner backbones --keras` the keras: ones)."
    )


def backbone_names() -> list[str]:
    """Names of every registered backbone, in registry order."""
    return list(BACKBONES)


def file_safe(name: str) -> str:
    """``name`` as a file, folder, Keras model or layer name: ``keras:ConvNeXtTiny`` -> ``keras-ConvNeXtTiny``.

    The user-facing name keeps its ``:``; only where it becomes a name on disk or in a
    graph is it replaced (``:`` is not portable in file names, and the SavedModel export
    refuses it in a model name: "not a valid root scope name").
    """
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)


def backbone_of_model(model_name: str) -> str | None:
    """The backbone name of one of our models, named ``cxr_<file_safe(backbone)>``; None for another model."""
    if not model_name.startswith("cxr_"):
        return None
    safe = model_name.removeprefix("cxr_")
    for name in [*BACKBONES, *_REGISTERED]:
        if file_safe(name) == safe:
            return name
    app = safe.removeprefix(file_safe(KERAS_PREFIX))
    if safe != app and app in keras_application_names():
        return KERAS_PREFIX + app
    return None


# --- keras:NAME -------------------------------------------------------------------------------------

_SIZE_TABLE = {"mobilenet_v3": (224, 32)}
"""``(default_size, min_size)`` of the families that check their input size without
``imagenet_utils.obtain_input_shape`` (MobileNetV3: 224, at least 32x32)."""


def keras_application_names() -> list[str]:
    """The model names of ``keras.applications`` (``ConvNeXtTiny``, ``ResNet50``, ...), sorted."""
    return sorted(n for n in dir(keras.applications)
                  if n[:1].isupper() and callable(getattr(keras.applications, n)))


class _Asked(Exception):
    """Raised by a patched Keras function to stop a dry construction once it has told what we need."""


def _dry_call(module, attribute: str, record: Callable, call: Callable) -> bool:
    """Calls ``call()`` with ``module.attribute`` replaced by ``record`` (which raises ``_Asked``); True if it did."""
    original = getattr(module, attribute)
    setattr(module, attribute, record)
    try:
        call()
    except _Asked:
        return True
    finally:
        setattr(module, attribute, original)
    return False


def preprocess_mode_of(application: Callable) -> str:
    """The mode of ``hypermodels.preprocess`` that reproduces the application's own ``preprocess_input``.

    Found numerically on grey images (three equal channels, as ours are), so a family
    that normalises inside the model (ConvNeXt, EfficientNet, RegNet, MobileNetV3:
    ``preprocess_input`` is the identity) comes out as ``raw``.
    """
    preprocess_input = sys.modules[application.__module__].preprocess_input
    grey = np.repeat(np.linspace(0, 255, 16, dtype="float32").reshape(1, 4, 4, 1), 3, axis=-1)
    expected = np.asarray(preprocess_input(grey.copy()), "float32")
    for mode in MODES:
        scale, offset = affine(mode)
        if np.allclose(grey * np.float32(scale) + np.float32(offset), expected, atol=1e-4):
            return mode
    raise ValueError(f"No preprocess mode reproduces {application.__module__}.preprocess_input.")


def _sizes(application: Callable) -> tuple[int, int]:
    """``(default_size, min_size)``: what the application passes to its own input-shape check."""
    family = application.__module__.rsplit(".", 1)[-1]
    if family in _SIZE_TABLE:
        return _SIZE_TABLE[family]
    from keras.src.applications import imagenet_utils

    seen = {}

    def record(input_shape, default_size, min_size, *args, **kwargs):
        seen.update(default_size=default_size, min_size=min_size)
        raise _Asked

    if not _dry_call(imagenet_utils, "obtain_input_shape", record,
                     lambda: application(include_top=False, weights=None)):
        return 224, 32
    return seen["default_size"], seen["min_size"]


class _KerasWeightFile:
    """``size -> file name`` that the application fetches into the Keras cache for that input size.

    Asked of Keras itself: a dry construction with ``file_utils.get_file`` patched to
    record its file name and stop. Cached per size (the construction builds the model).
    """

    def __init__(self, application: Callable):
        self.application = application
        self._names: dict[int, str] = {}

    def __call__(self, size: int) -> str:
        if size not in self._names:
            from keras.src.utils import file_utils

            asked = []

            def record(fname=None, *args, **kwargs):
                asked.append(fname)
                raise _Asked

            build = functools.partial(self.application, include_top=False, weights="imagenet",
                                      input_shape=(size, size, 3))
            try:
                fetched = _dry_call(file_utils, "get_file", record, build)
            except ValueError as error:  # the application refuses this size with ImageNet weights
                raise UserError(f"keras:{self.application.__name__} has no ImageNet weights at {size} px "
                                f"({' '.join(str(error).split())[:200]}); pick another --image-size or "
                                "--weights none.") from None
            if not fetched:
                raise ValueError(f"{self.application.__name__} fetched no weight file.")
            self._names[size] = asked[0]
        return self._names[size]


@functools.cache
def _keras_backbone(app: str) -> BackboneSpec:
    """The spec of ``keras.applications.<app>``, described from the model (built once, without weights)."""
    if app not in keras_application_names():
        close = difflib.get_close_matches(app, keras_application_names(), n=1)
        hint = f" (did you mean keras:{close[0]}?)" if close else ""
        raise UserError(f"Unknown backbone {KERAS_PREFIX}{app}: keras.applications has no model {app!r}{hint}; "
                        "`cxr-tuner backbones --keras` lists the valid keras:NAME backbones.")
    application = getattr(keras.applications, app)
    default_size, min_size = _sizes(application)
    size = max(min_size, 32)
    found = discovery.describe(application(include_top=False, weights=None, input_shape=(size, size, 3)))
    return BackboneSpec(KERAS_PREFIX + app, KerasApplication(app, found.renames), preprocess_mode_of(application),
                        default_size, min_size, found.last_conv_layer, found.cuts, _KerasWeightFile(application))


@dataclasses.dataclass(frozen=True)
class KerasApplication:
    """The constructor of ``keras:NAME``: ``keras.applications.NAME``, with its unnamed cut points named.

    Without ``renames`` it is the application itself. With them (ConvNeXt, Xception:
    blocks that end in a Keras op or a Keras-named layer) the application is built
    standalone and rebuilt flat on ``input_tensor`` with a named ``Identity`` after each
    of those (``hypermodels.discovery.with_named_outputs``), holding the same values.
    """

    name: str
    renames: tuple = ()

    def __call__(self, include_top=False, weights=None, input_tensor=None, input_shape=None, **kwargs):
        application = getattr(keras.applications, self.name)
        if not self.renames:
            return application(include_top=include_top, weights=weights, input_tensor=input_tensor,
                               input_shape=input_shape, **kwargs)
        shape = input_shape or tuple(input_tensor.shape[1:])
        model = application(include_top=include_top, weights=weights, input_shape=shape, **kwargs)
        return discovery.with_named_outputs(model, dict(self.renames), input_tensor)


# --- backbones of one's own ---------------------------------------------------------------------------

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
    if not isinstance(model, keras.src.models.Functional):
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

        outputs = trunk._run_through_graph(inputs, operation_fn=fresh)
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


_UNAVAILABLE: dict[str, str] = {}
"""Backbones of one's own a loaded run names whose file is gone or changed: why, said when one is needed."""


def unavailable(name: str, reason: str) -> None:
    """Makes ``get_backbone(name)`` raise ``reason``: a stored run's backbone whose file cannot be used now.

    Commands that only read saved models (``predict``, the report) go on without it.
    """
    _REGISTERED.pop(name, None)  # an earlier registration in this process is of the file as it was
    _UNAVAILABLE[name] = reason


def register(spec: BackboneSpec) -> None:
    """Makes ``get_backbone(spec.name)`` return ``spec`` in this process; again with an equal spec is fine.

    Raises:
        UserError: If the name is a registry name, or already registered with another spec.
    """
    if spec.name in BACKBONES or spec.name.startswith(KERAS_PREFIX):
        raise UserError(f"backbone {spec.name!r}: that name is the registry's; choose another name.")
    if _REGISTERED.get(spec.name, spec) != spec:
        raise UserError(f"backbone {spec.name!r} is already registered with other settings in this process; "
                        "give each backbone of one's own a name of its own.")
    _REGISTERED.setdefault(spec.name, spec)  # the first stays: specs handed out before remain the one
    _UNAVAILABLE.pop(spec.name, None)
