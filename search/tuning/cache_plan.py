"""How big the activation cache of a run will be, decided before anything is written.

Per image and backbone the cache holds one array per cached unfreeze depth: the pooled
features (depth 0) and the activations at each cut point, the deeper cuts usually the
larger ones (earlier layers, more pixels). The size is the product of each cut's
shape at the run's image size, times the dtype's bytes, times the images of the
decoded cache. A size budget keeps depths shallowest first, level by level over the
backbones, while they fit; the depths left out train on images like a backbone
trained from scratch (slower trials, the same scores as on exact activations).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from cxr_tuner.data.errors import UserError
from cxr_tuner.hypermodels.cutting import cut_layer, is_cacheable
from cxr_tuner.hypermodels.registry import Backbones


@dataclass(frozen=True)
class CachePlan:
    """Per backbone, bytes per image of each unfreeze depth, and how many depths are cached.

    Attributes:
        n_images: Rows of every array (the run's decoded images).
        dtype: ``"float32"`` or ``"float16"``.
        per_image: ``{backbone: [bytes per image at depth 0, 1, ...]}`` for cacheable backbones.
        depths: ``{backbone: how many depths (0, 1, ...) are cached}``.
    """

    n_images: int
    dtype: str
    per_image: dict
    depths: dict

    def cached_bytes(self, backbone: str | None = None) -> int:
        """Bytes on disk of the cached depths (of one backbone, or all)."""
        names = [backbone] if backbone else list(self.per_image)
        return sum(sum(self.per_image[b][:self.depths[b]]) * self.n_images for b in names)

    def left_out(self) -> dict:
        """``{backbone: (first depth on images, bytes its depths would add)}`` where the budget cut."""
        return {b: (self.depths[b], sum(sizes[self.depths[b]:]) * self.n_images)
                for b, sizes in self.per_image.items() if self.depths[b] < len(sizes)}


def plan_cache(shapes: Callable[[str], list[tuple]], backbones, weights: str, n_images: int,
               dtype: str = "float32", budget_gb: float | None = None, *, specs: Backbones) -> CachePlan:
    """The cache of ``backbones`` for ``n_images``, within ``budget_gb`` (decimal GB) if given.

    Args:
        shapes: ``backbone -> [per-image shape of the cut at depth 0, 1, ...]``.
        specs: The run's backbones, which ``backbones`` name.
    """
    itemsize = np.dtype(dtype).itemsize
    per_image = {b: [int(np.prod(s)) * itemsize for s in shapes(b)]
                 for b in backbones if is_cacheable(specs.get(b), weights)}
    depths = {b: len(sizes) for b, sizes in per_image.items()}
    if budget_gb is not None:
        depths = dict.fromkeys(per_image, 0)
        left, open_ = budget_gb * 1e9, set(per_image)
        for level in range(max((len(s) for s in per_image.values()), default=0)):
            for backbone in per_image:  # shallowest first, in the order of --backbones
                sizes = per_image[backbone]
                if backbone in open_ and level < len(sizes):
                    if sizes[level] * n_images > left:
                        open_.discard(backbone)  # cached depths stay 0..k: the deeper ones train on images
                    else:
                        left -= sizes[level] * n_images
                        depths[backbone] = level + 1
    return CachePlan(n_images, dtype, per_image, depths)


def cut_shapes(model_of: Callable, backbone: str, *, specs: Backbones) -> list[tuple]:
    """Per-image shapes of ``backbone``'s cuts (one of ``specs``), depth 0 first, from its frozen image model."""
    spec = specs.get(backbone)
    model = model_of(backbone)
    return [tuple(model.get_layer(cut_layer(spec, d)).output.shape[1:])
            for d in range(len(spec.unfreeze_points) + 1)]


def check_and_report(plan: CachePlan, folder: Path, existing: Callable[[str], int],
                     log: Callable[[str], None], image_size: int, budget_gb: float | None = None) -> None:
    """Prints the cache's size (and what a budget left out); refuses when the disk cannot hold it.

    Args:
        existing: ``backbone -> bytes of its cache entry already on disk`` (not written again).

    Raises:
        UserError: The free space of ``folder``'s disk is smaller than what is still to write.
    """
    if not plan.per_image:
        return
    folder.mkdir(parents=True, exist_ok=True)
    parts = ", ".join(f"{b} {_size(sum(plan.per_image[b][:plan.depths[b]]))}/image" for b in plan.per_image)
    to_write = sum(max(plan.cached_bytes(b) - existing(b), 0) for b in plan.per_image)
    free = free_bytes(folder)
    log(f"activation cache ({plan.dtype}, {plan.n_images} images at {image_size} px): {parts}; "
        f"total {_size(plan.cached_bytes())}, {_size(to_write)} still to write, {_size(free)} free")
    left_out = plan.left_out()
    if left_out:
        cut = "; ".join(f"{b} from unfreeze depth {d}" for b, (d, _) in left_out.items())
        extra = sum(size for _, size in left_out.values())
        log(f"cache budget {budget_gb:g} GB: {cut} train on images (caching them would add {_size(extra)})")
    if to_write > free:
        raise UserError(
            f"The activation cache needs {_size(to_write)} more in {folder} but only {_size(free)} is free: "
            "free some space, or pass --cache-dtype float16 (half the size), --cache-budget GB "
            "(deeper unfreeze depths train on images) or fewer --backbones.")


def free_bytes(folder: Path) -> int:
    """Free bytes on the disk of ``folder``."""
    return shutil.disk_usage(folder).free


def entry_bytes(entry: Path) -> int:
    """Bytes of the finished arrays in one cache entry folder (0 when there is none)."""
    if not entry.is_dir():
        return 0
    return sum(p.stat().st_size for p in entry.iterdir() if p.suffix in (".f32", ".f16"))


def _size(count: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count:.0f} B"
