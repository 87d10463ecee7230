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
Layers Keras named automatically (``add_7``) are never cuts: their names change
with whatever was built before in the process.
"""

from __future__ import annotations

import re

import keras
from keras.src.utils.naming import to_snake_case

CUTS = 3
"""How many cut points (unfreeze depths) a discovered backbone gets."""


def layer_graph(model: keras.Model) -> tuple[list, dict]:
    """``(layers in topological order, layer -> the layers it reads from)`` for a functional ``model``."""
    producers = {}
    operations = list(getattr(model, "operations", model.layers))  # keras.ops calls (``x + y``) too
    for layer in operations:
        node = layer._inbound_nodes[0] if layer._inbound_nodes else None
        parents = []
        for tensor in (node.input_tensors if node is not None else []):
            parent = tensor._keras_history.operation
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
    return model.outputs[0]._keras_history.operation


def single_4d(layer) -> bool:
    outputs = layer._inbound_nodes[0].output_tensors if layer._inbound_nodes else []
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
    return re.fullmatch(rf"{re.escape(to_snake_case(type(layer).__name__))}(_\d+)?", layer.name) is not None


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
        outputs = layer._inbound_nodes[0].output_tensors if layer._inbound_nodes else []
        if type(layer).__name__.startswith("Global") or any(len(t.shape) != 4 for t in outputs):
            return True
        parents = producers.get(layer, [])
        if len(parents) != 1:
            return False
        layer = parents[0]
    return False


def _has_trainable_weights(layer) -> bool:
    normalizing = (keras.layers.BatchNormalization, keras.layers.LayerNormalization)
    return bool(layer.trainable_weights) and not isinstance(layer, normalizing)


def find_cut_points(model: keras.Model, last_conv_layer: str, count: int = CUTS) -> tuple[str, ...]:
    """Up to ``count`` cut points below ``last_conv_layer``, from the top down (see the module docstring)."""
    top = model.get_layer(last_conv_layer)
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
        for parent in producers.get(layer, []):
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
        if not usable(model, layer):
            continue
        if any(_has_trainable_weights(order[i]) for i in range(position[layer] + 1, above + 1)):
            chosen.append(layer.name)
            above = position[layer]
    return tuple(chosen)
