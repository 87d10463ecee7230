"""Finding a backbone's Grad-CAM layer and its unfreeze cut points from its layer graph.

A cut point must be a single 4-D tensor that every path from the input to the
output passes through (an articulation point of the layer graph): only there is
the frozen part's output one cacheable array, and the part above it a model of
its own. Among those, cuts sit at block boundaries, where the layer names'
block numbers change (``conv5_block2_out`` -> ``conv5_block3_*``,
``conv_pw_12_relu`` -> ``conv_dw_13``), at the end of a block that joins paths
(a residual add or a concatenation; squeeze-and-excitation gates, which multiply
by a 1x1 tensor, are not joins), unless the architecture joins none (a plain
chain such as MobileNet or VGG), and each step down adds trainable layers.
A layer Keras named automatically (``add_7``) has no stable name (it depends on
what was built before in the process) and a ``keras.ops`` call (ConvNeXt's
``x + y``) or a nested model no ``get_layer(...).output`` in the outer graph:
:func:`describe` names such a cut (or Grad-CAM layer) with an ``Identity`` layer
after it, which :func:`with_named_outputs` inserts when the backbone is built.
"""

from __future__ import annotations

import dataclasses
import re

import keras

from cxr_tuner.hypermodels.compat import keras_compat

CUTS = 3
"""How many cut points (unfreeze depths) a discovered backbone gets."""


def layer_graph(model: keras.Model) -> tuple[list, dict]:
    """``(layers in topological order, layer -> the layers it reads from)`` for a functional ``model``."""
    producers = {}
    operations = list(getattr(model, "operations", model.layers))  # keras.ops calls (``x + y``) too
    for layer in operations:
        parents = []
        for tensor in keras_compat.call_inputs(layer):
            parent = keras_compat.producer(tensor)
            if parent is not layer and parent not in parents:
                parents.append(parent)
        producers[layer] = parents
    order, placed = [], set()
    pending = operations
    while pending:  # Kahn's algorithm, keeping Keras' order among the ready ones
        ready = [layer for layer in pending if all(p in placed or p not in producers for p in producers[layer])]
        if not ready:
            raise ValueError(f"The layer graph of {model.name} has a cycle.")
        for layer in ready:
            order.append(layer)
            placed.add(layer)
        pending = [layer for layer in pending if layer not in placed]
    return order, producers


def _output_layer(model: keras.Model):
    return keras_compat.producer(model.outputs[0])


def single_4d(layer) -> bool:
    outputs = keras_compat.call_outputs(layer)
    return len(outputs) == 1 and len(outputs[0].shape) == 4


def articulation_layers(model: keras.Model, output=None) -> list:
    """Layers with one 4-D output that every path from the input to ``output`` (default the model's) passes through.

    Topological order, bottom up. In a topological order of the layers the output
    depends on, a layer is on every path exactly when no edge jumps over it.
    """
    order, producers = layer_graph(model)
    needed = _ancestors(output or _output_layer(model), producers)
    order = [layer for layer in order if layer in needed]
    position = {layer: i for i, layer in enumerate(order)}
    last_use = list(range(len(order)))  # last_use[i]: position of the last layer reading layer i
    for layer in order:
        for parent in producers[layer]:
            if parent in position:
                last_use[position[parent]] = max(last_use[position[parent]], position[layer])
    found, furthest = [], 0
    for i, layer in enumerate(order):
        if furthest <= i and single_4d(layer):
            found.append(layer)
        furthest = max(furthest, last_use[i])
    return found


def is_auto_named(layer) -> bool:
    """Whether Keras named ``layer`` from its class (``add``, ``conv2d_85``): such names depend on build order."""
    return re.fullmatch(rf"{re.escape(keras_compat.auto_name(type(layer).__name__))}(_\d+)?", layer.name) is not None


def usable(model: keras.Model, layer, stable_names: bool = False) -> bool:
    """Whether ``model.get_layer(layer.name).output`` is ``layer``'s tensor in this graph, under a stable name.

    Not a ``keras.ops`` call (not a layer), a nested model (its ``output`` is its own
    graph's) or, unless ``stable_names`` (a model loaded from a file keeps its names),
    a layer Keras named.
    """
    return (layer in model.layers and not isinstance(layer, keras.Model)
            and (stable_names or not is_auto_named(layer)))


def _ancestors(output, producers) -> set:
    needed, stack = set(), [output]
    while stack:
        layer = stack.pop()
        if layer not in needed:
            needed.add(layer)
            stack.extend(producers.get(layer, []))
    return needed


def find_last_conv_layer(model: keras.Model, stable_names: bool = False) -> str:
    """The last layer with a 4-D output before global pooling: Grad-CAM's layer.

    For a no-top application that is its output layer (or, where that is a Keras
    op, the last named layer before it); for a model with a head, the input of its pooling.
    """
    order, producers = layer_graph(model)
    needed = _ancestors(_output_layer(model), producers)
    spatial = [layer for layer in order if layer in needed and usable(model, layer, stable_names) and single_4d(layer)]
    if not spatial:
        raise ValueError(f"{model.name} has no named layer with a 4-D output.")
    return spatial[-1].name


def _block(name: str) -> tuple[int, ...]:
    return tuple(int(d) for d in re.findall(r"\d+", name))


def _is_join(layer, producers) -> bool:
    """A merge of two or more spatial paths (not a gate: a path through a pooled, non-4-D tensor)."""
    parents = producers.get(layer, [])
    return len(parents) >= 2 and not any(_is_gate(p, producers) for p in parents)


def _is_gate(layer, producers, steps: int = 8) -> bool:
    # Squeeze-and-excitation: pool -> (reshape) -> 1x1 convs -> multiply; the chain back meets a global pooling.
    for _ in range(steps):
        outputs = keras_compat.call_outputs(layer)
        if type(layer).__name__.startswith("Global") or any(len(t.shape) != 4 for t in outputs):
            return True
        parents = producers.get(layer, [])
        if len(parents) != 1:
            return False
        layer = parents[0]
    return False


def _has_trainable_weights(layer) -> bool:
    normalizing = (keras.layers.BatchNormalization, keras.layers.LayerNormalization)
    return bool(getattr(layer, "trainable_weights", None)) and not isinstance(layer, normalizing)


def find_cut_points(model: keras.Model, last_conv_layer: str, count: int = CUTS) -> tuple[str, ...]:
    """Up to ``count`` cut points below ``last_conv_layer``, from the top down (see the module docstring).

    Only layers :func:`usable` as they are; :func:`describe` also names the others.
    """
    return tuple(op.name for op in _cut_operations(model, model.get_layer(last_conv_layer), count, False))


def _cut_operations(model: keras.Model, top, count: int, unusable: bool) -> list:
    """The cut points below operation ``top``, top down; with ``unusable``, also Keras ops and named nested models."""
    order, producers = layer_graph(model)
    needed = _ancestors(top, producers)
    order = [layer for layer in order if layer in needed]
    position = {layer: i for i, layer in enumerate(order)}
    consumers = {layer: [] for layer in order}
    for layer in order:
        for parent in producers[layer]:
            if parent in consumers:
                consumers[parent].append(layer)

    def effective(layer, seen=()):
        # A Keras-named layer (``add_3``) belongs to the block of the named layers it reads.
        if not is_auto_named(layer):
            return _block(layer.name)
        parents = producers.get(layer, [])
        # The block's own branch first: the last named input (a skip connection comes first).
        for parent in [p for p in reversed(parents) if not is_auto_named(p)] + [p for p in parents if is_auto_named(p)]:
            if parent in position and parent not in seen:
                block = effective(parent, (*seen, layer))
                if block:
                    return block
        return ()

    def boundary(layer) -> bool:
        block = effective(layer)
        return bool(block) and all(effective(c, (layer,))[:len(block)] != block for c in consumers[layer])

    points = [layer for layer in articulation_layers(model, top) if layer is not top]
    boundaries = [layer for layer in points if boundary(layer)]
    joins = [position[layer] for layer in order if _is_join(layer, producers)]
    if joins:
        starts = [-1] + [position[b] for b in boundaries]
        boundaries = [b for b, start in zip(boundaries, starts)
                      if any(start < j <= position[b] for j in joins)]
    chosen, above = [], position[top]
    for layer in reversed(boundaries):
        if len(chosen) == count:
            break
        if not (usable(model, layer) or unusable and single_4d(layer)):
            continue
        if any(_has_trainable_weights(order[i]) for i in range(position[layer] + 1, above + 1)):
            chosen.append(layer)
            above = position[layer]
    return chosen


def _anchor(op, producers, depth: int = 8) -> str:
    """The name of the nearest named operation at or below ``op``: what a name for ``op``'s output derives from."""
    for _ in range(depth):
        if not is_auto_named(op):
            return op.name
        parents = producers.get(op, [])
        if not parents:
            break
        named = [p for p in parents if not is_auto_named(p)]
        op = named[-1] if named else parents[-1]
    return op.name


def operation_key(op, producers) -> tuple[str, str]:
    """``(class name, nearest named operation)``: finds the same operation in every build of an application."""
    return type(op).__name__, _anchor(op, producers)


def _output_name(op, producers, taken: set) -> str:
    anchor = _anchor(op, producers)
    if anchor == op.name:  # a named nested model
        name = f"{anchor}_out"
    else:  # the block the Keras op ends: conv5_block3_1_bn -> conv5_block3_1_out
        digits = list(re.finditer(r"\d+", anchor))
        name = f"{anchor[:digits[-1].end()] if digits else anchor}_out"
    while name in taken:
        name += "_cut"
    taken.add(name)
    return name


@dataclasses.dataclass(frozen=True)
class Description:
    """What :func:`describe` finds: Grad-CAM's layer, the cut points (top down), and the outputs to name.

    ``renames`` maps :func:`operation_key` of a Keras-named op (or nested model) to the
    name of the ``Identity`` layer :func:`with_named_outputs` puts after it.
    """

    last_conv_layer: str
    cuts: tuple[str, ...]
    renames: tuple[tuple[tuple[str, str], str], ...] = ()


def describe(model: keras.Model, count: int = CUTS) -> Description:
    """Grad-CAM's layer and the cut points of a no-top application, naming those Keras left unnamed.

    Where the output or a cut point is a Keras op (ConvNeXt's ``x + y``), a layer Keras
    named (Xception's ``add_7``) or a nested model, its output gets a named ``Identity``
    layer (:func:`with_named_outputs`), so that ``model.get_layer(cut).output`` works in
    every build.
    """
    order, producers = layer_graph(model)
    taken = {op.name for op in order}
    renames = {}

    def name(op) -> str:
        if usable(model, op):
            return op.name
        key = operation_key(op, producers)
        renames.setdefault(key, _output_name(op, producers, taken))
        return renames[key]

    top = _output_layer(model)
    if not single_4d(top):
        top = model.get_layer(find_last_conv_layer(model))
    last = name(top)
    cuts = tuple(name(op) for op in _cut_operations(model, top, count, True))
    return Description(last, cuts, tuple(renames.items()))


def with_named_outputs(model: keras.Model, renames: dict, input_tensor=None) -> keras.Model:
    """``model`` rebuilt on ``input_tensor`` from copies of its layers (holding its values), flat,
    with a named ``Identity`` after each operation whose :func:`operation_key` ``renames`` names.
    """
    order, producers = layer_graph(model)
    tags = {op: renames[operation_key(op, producers)] for op in order if operation_key(op, producers) in renames}
    originals, pairs = {}, []

    def fresh(op):
        clone = op.__class__.from_config(op.get_config())
        originals[id(clone)] = op
        pairs.append((op, clone))
        return clone

    def call(clone, *args, **kwargs):
        outputs = clone(*args, **kwargs)
        tag = tags.get(originals[id(clone)])
        return keras.layers.Identity(name=tag)(outputs) if tag else outputs

    inputs = input_tensor if input_tensor is not None else keras.Input(model.inputs[0].shape[1:])
    outputs = keras_compat.run_through_graph(model, inputs, fresh, call)
    for op, clone in pairs:
        if getattr(op, "weights", None):
            clone.set_weights(op.get_weights())
    sources = keras.utils.get_source_inputs(inputs) if input_tensor is not None else inputs
    return keras.Model(sources, outputs, name=model.name)
