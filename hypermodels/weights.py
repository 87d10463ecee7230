"""Where a backbone's starting weights come from: ImageNet, none, or a file.

``--weights imagenet`` means each backbone's pretrained weights: ImageNet's for the
registry's and ``keras:NAME`` backbones (from the Keras cache, the shipped copy or a
download), the file's own for a backbone of one's own.
"""

from __future__ import annotations

import os
from pathlib import Path

from cxr_tuner.data.errors import UserError
from cxr_tuner.hypermodels.backbones.spec import BackboneSpec


SHIPPED_DIR = Path(__file__).parent / "assets"
"""ImageNet weight files shipped with the package (MobileNet alpha 0.25, Apache-2.0, see NOTICE there),
used when the Keras cache has none: the demo and the tests transfer from ImageNet offline."""


def keras_cache_dir() -> Path:
    """The folder where Keras looks for downloaded weights (``$KERAS_HOME/models``)."""
    # KERAS_HOME is Keras' own documented setting; we mirror its rule here.
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def resolve_weights(spec: BackboneSpec, weights: str, size: int) -> str | None:
    """Turns the ``--weights`` choice into what the Keras constructor takes.

    Args:
        spec: The backbone.
        weights: ``"imagenet"``, ``"none"`` or a path to a weights file.
        size: Input size, which picks the weight file for the MobileNets.

    Returns:
        ``"imagenet"``, a file path (given, or the shipped copy when the Keras cache
        lacks the ImageNet file; a backbone of one's own: its ``.keras`` file), or ``None``
        (random initialisation). From-scratch backbones (no ImageNet weights exist) always get ``None``.

    Raises:
        UserError: If the ImageNet file is neither cached nor downloadable, or the
            given path does not exist.
    """
    if not starts_pretrained(spec, weights):
        return None
    if weights != "imagenet":
        if not Path(weights).is_file():
            raise UserError(f"Weights file {weights} does not exist; pass an existing .h5/.weights.h5 file, 'imagenet' or 'none'.")
        return str(weights)
    if spec.file is not None:
        if not Path(spec.file).is_file():
            raise UserError(f"The file {spec.file} of backbone {spec.name} is gone; put it back or pass --weights none.")
        return spec.file
    file_name = spec.weight_file(size)
    if not (keras_cache_dir() / file_name).is_file():
        if (SHIPPED_DIR / file_name).is_file():
            return str(SHIPPED_DIR / file_name)
        _download(spec, file_name, size)
    return "imagenet"


def starts_pretrained(spec: BackboneSpec, weights: str) -> bool:
    """Whether the backbone starts from trained weights (``--weights`` not ``none``, and some exist for it)."""
    return weights != "none" and spec.pretrainable


def weights_origin(spec: BackboneSpec, weights: str, size: int) -> str:
    """Where the backbone's starting weights come from, in words (what :func:`resolve_weights` picks).

    E.g. ``ImageNet weights, shipped with the package (hypermodels/assets/mobilenet_2_5_224_tf_no_top.h5)``,
    ``ImageNet weights from the Keras cache (...)``, ``weights from the file ...``, or for a from-scratch
    backbone why it is one: ``--weights none`` or ``no pretrained weights exist for it``.
    """
    if not starts_pretrained(spec, weights):
        return "--weights none" if spec.pretrainable else "no pretrained weights exist for it"
    resolved = resolve_weights(spec, weights, size)
    if resolved == "imagenet":
        return f"ImageNet weights from the Keras cache ({keras_cache_dir() / spec.weight_file(size)})"
    if resolved == spec.file:
        return f"weights from its own file {resolved}"
    if Path(resolved).parent == SHIPPED_DIR:
        return f"ImageNet weights, shipped with the package ({Path(resolved).relative_to(SHIPPED_DIR.parent.parent)})"
    return f"weights from the file {resolved}"


def _download(spec: BackboneSpec, file_name: str, size: int) -> None:
    """Lets Keras fetch the weights itself; offline, says which file to place where."""
    try:
        spec.constructor(include_top=False, weights="imagenet", input_shape=(size, size, 3))
    except Exception as error:  # Keras raises a bare Exception on a failed fetch.
        raise UserError(
            f"ImageNet weights for {spec.name} are not available offline and could not be "
            f"downloaded ({type(error).__name__}). Put the file {file_name} into "
            f"{keras_cache_dir()}/ (or pass --weights none to train from scratch, or "
            "--weights PATH for a file of your own)."
        ) from None
