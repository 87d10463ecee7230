"""Re-renderings of films along the ways hospitals make them differently (acquisition shift).

A film's look carries its source: the resampling chain it went through, JPEG storage, bit
depth and windowing, the tone curve, sharpening, noise, collimation borders and burned-in
markers. A model that reads those instead of the chest fails at the next hospital. Each
family here re-renders a film the way another source could have made it, with parameters
drawn from ``(seed, family, id)`` alone, so a film's rendering does not depend on the batch
it sits in and the same seed gives the same pixels.

They serve twice: the stress test scores the final model on each family's rendering of the
evaluated films, and training adds rendered copies of its films (:func:`training_copies`)
so the cues stop predicting the label.
"""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from cxr_tuner.data import files
from cxr_tuner.data.errors import UserError

FAMILIES = ("resampling", "jpeg", "bit_depth", "window_gamma", "blur_sharpen", "noise", "border", "markers")
DESCRIPTIONS = {
    "resampling": "down to 30-70% and back up through other filters, no anti-aliasing",
    "jpeg": "JPEG re-encoding at quality 15-60",
    "bit_depth": "stored at 4-6 bits",
    "window_gamma": "another window (level and width) and tone curve (gamma 0.6-1.6)",
    "blur_sharpen": "a softer detector (blur) or an unsharp-mask sharpening",
    "noise": "quantum-like noise, stronger in dark regions",
    "border": "collimation: dark or bright bands on 1-4 sides",
    "markers": "burned-in letters (side markers, 'AP', 'PORTABLE') in the corners",
}
_FILTERS = (Image.Resampling.NEAREST, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC,
            Image.Resampling.LANCZOS, Image.Resampling.BOX)
_MARKER_TEXT = ("L", "R", "AP", "PA", "PORTABLE", "SUPINE", "ERECT")
MARKER_BAND = 0.22  # markers stay inside this fraction of the side from an edge: never on the central field


def render(images: np.ndarray, family: str, seed: int, ids=None) -> np.ndarray:
    """``images`` (N, S, S, 1) uint8, each re-rendered by ``family`` with parameters from ``(seed, family, ids[i])``.

    Args:
        images: Films (an array or memmap; rows are read one at a time).
        family: One of :data:`FAMILIES`.
        seed: The run's seed.
        ids: One integer per film (default ``0..N-1``): a film keeps its rendering in any batch.
    """
    if family not in FAMILIES:
        raise ValueError(f"Unknown shift family {family!r}; expected one of {', '.join(FAMILIES)}.")
    ids = np.arange(len(images)) if ids is None else np.asarray(ids)
    step = _STEPS[family]
    out = np.empty((len(images), *images.shape[1:3], 1), dtype=np.uint8)
    for row, film_id in enumerate(ids):
        rng = _rng(seed, family, int(film_id))
        out[row, ..., 0] = step(np.asarray(images[row]).reshape(images.shape[1:3]), rng)
    return out


def training_copies(images: np.ndarray, copies: int, seed: int, ids=None, rows=None) -> tuple[np.ndarray, np.ndarray]:
    """``copies`` re-rendered copies of each film, each through a random chain of 2-3 families.

    Real films differ in several ways at once (a resampled, JPEG-stored, re-windowed film),
    so a copy chains families in the order a film meets them: acquisition, processing, storage.

    Args:
        images: The films (array or memmap).
        copies: Copies per film.
        seed: The run's seed.
        ids: One integer per film of ``rows`` (default: the row numbers).
        rows: Which rows of ``images`` to copy (default all).

    Returns:
        ``(copies * len(rows), S, S, 1)`` uint8 copies, copy-major (copy k of every film,
        then copy k+1), and the row of ``images`` each copy renders.
    """
    rows = np.arange(len(images)) if rows is None else np.asarray(rows)
    ids = rows if ids is None else np.asarray(ids)
    out = np.concatenate([_copy_k(images, rows, seed, k, ids)[0] for k in range(copies)]) if copies else \
        np.empty((0, *images.shape[1:3], 1), np.uint8)
    return out, np.tile(rows, copies)


VERSION = 1  # bump when a family's rendering changes: stored copies of another version are not read


class StoredCopies:
    """Training copies of some rows of a run's films, kept on disk beside its decoded cache.

    Attributes:
        images: ``(copies * len(rows), S, S, 1)`` uint8 memmap, copy-major.
        sources: The row of the run's images each copy renders.
        copies: Copies per film.
    """

    def __init__(self, images: np.ndarray, sources: np.ndarray, copies: int):
        self.images, self.sources, self.copies = images, np.asarray(sources), copies

    def variants(self, rows, total: int) -> np.ndarray:
        """``(len(rows), 1 + copies)`` rows of the stacked (films, then copies) array: each film and its copies.

        ``total`` is the number of films before the copies start.
        """
        position = np.full(total, -1, dtype=np.int64)
        per_copy = len(self.sources) // max(self.copies, 1)
        position[self.sources[:per_copy]] = np.arange(per_copy)
        rows = np.asarray(rows, dtype=np.int64)
        if (position[rows] < 0).any():
            raise ValueError("some rows have no stored copies")
        return np.stack([rows] + [total + k * per_copy + position[rows] for k in range(self.copies)], axis=1)


def stored_copies(images: np.ndarray, rows, copies: int, seed: int, folder: Path) -> StoredCopies:
    """The training copies of ``images[rows]``, rendered once and kept in ``folder`` (read back when current).

    The file's name carries what the copies depend on (the films' pixels, the rows, the seed,
    the count and the renderer's version): a copy of other films is never read as current.

    Raises:
        UserError: The disk has no room for them.
    """
    rows = np.asarray(rows, dtype=np.int64)
    digest = hashlib.sha256(f"{VERSION}/{copies}/{seed}/{images.shape}".encode())
    digest.update(rows.tobytes())
    for start in range(0, len(rows), 512):
        digest.update(np.ascontiguousarray(images[rows[start:start + 512]]).data)
    name = f"copies-{copies}x{len(rows)}-{digest.hexdigest()[:20]}"
    folder = Path(folder)
    data, meta = folder / f"{name}.u8", folder / f"{name}.json"
    shape = (copies * len(rows), *images.shape[1:3], 1)
    if not meta.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        needed = int(np.prod(shape))
        if shutil.disk_usage(folder).free < needed:
            raise UserError(f"Not enough disk space in {folder} for {copies} re-rendered copies of the training "
                            f"films ({needed / 1e6:,.0f} MB); free some space or train with --shift-copies 0.")
        with files.replaced(data, "wb") as out:
            for k in range(copies):
                for start in range(0, len(rows), 256):
                    chunk = rows[start:start + 256]
                    # One rendering per (film, copy) whatever the chunking: the ids are the film rows.
                    out.write(_copy_k(images, chunk, seed, k)[0].tobytes())
        files.write_json(meta, {"shape": list(shape), "copies": copies, "seed": seed, "version": VERSION})
    pixels = np.memmap(data, dtype=np.uint8, mode="r", shape=shape)
    return StoredCopies(pixels, np.tile(rows, copies), copies)


def _copy_k(images, rows, seed: int, k: int, ids=None):
    """Copy ``k`` of each of ``images[rows]``: a chain of 2-3 families drawn from ``(seed, id, k)``."""
    side = images.shape[1:3]
    ids = rows if ids is None else ids
    out = np.empty((len(rows), *side, 1), dtype=np.uint8)
    for j, (row, film_id) in enumerate(zip(rows, ids)):
        rng = _rng(seed, "chain", int(film_id), k)
        chain = sorted(rng.choice(len(_CHAIN_ORDER), size=int(rng.integers(2, 4)), replace=False))
        pixels = np.asarray(images[row]).reshape(side)
        for index in chain:
            pixels = _STEPS[_CHAIN_ORDER[index]](pixels, rng)
        out[j, ..., 0] = pixels
    return out, rows


def _rng(seed: int, family: str, *ids: int) -> np.random.Generator:
    name = sum((i + 1) * ord(c) for i, c in enumerate(family))  # stable across processes, unlike hash()
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, name, *(int(i) & 0xFFFFFFFF for i in ids)])


def _resampling(pixels: np.ndarray, rng) -> np.ndarray:
    side = pixels.shape[0]
    small = max(4, int(round(side * rng.uniform(0.3, 0.7))))
    down, up = rng.choice(len(_FILTERS), size=2)
    image = Image.fromarray(pixels)
    # reducing_gap=None and a point-sampling filter on the way down alias as a careless pipeline does.
    shrunk = image.resize((small, small), _FILTERS[down] if rng.random() < 0.5 else Image.Resampling.NEAREST)
    return np.asarray(shrunk.resize((side, side), _FILTERS[up]), dtype=np.uint8)


def _jpeg(pixels: np.ndarray, rng) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=int(rng.integers(15, 61)))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("L"), dtype=np.uint8)


def _bit_depth(pixels: np.ndarray, rng) -> np.ndarray:
    levels = 2 ** int(rng.integers(4, 7))
    step = 256 / levels
    return np.clip(np.floor(pixels / step) * step + step / 2, 0, 255).astype(np.uint8)


def _window_gamma(pixels: np.ndarray, rng) -> np.ndarray:
    values = pixels.astype(np.float32) / 255.0
    low, high = rng.uniform(-0.1, 0.15), rng.uniform(0.85, 1.1)  # a window past the data's range lifts or crushes it
    values = np.clip((values - low) / (high - low), 0.0, 1.0)
    values = values ** float(np.exp(rng.uniform(np.log(0.6), np.log(1.6))))
    return np.clip(np.round(values * 255.0), 0, 255).astype(np.uint8)


def _blur_sharpen(pixels: np.ndarray, rng) -> np.ndarray:
    image, scale = Image.fromarray(pixels), pixels.shape[0] / 224.0
    if rng.random() < 0.5:
        return np.asarray(image.filter(ImageFilter.GaussianBlur(rng.uniform(0.7, 1.8) * scale)), dtype=np.uint8)
    radius = max(0.5, rng.uniform(1.0, 3.0) * scale)
    return np.asarray(image.filter(ImageFilter.UnsharpMask(radius, int(rng.integers(80, 220)), 0)), dtype=np.uint8)


def _noise(pixels: np.ndarray, rng) -> np.ndarray:
    values = pixels.astype(np.float32)
    # Fewer photons reach the detector where the film is bright (dense tissue): the noise is
    # largest there in raw counts; after the log/inversion a film shows it mostly in the lungs' dark.
    sigma = rng.uniform(3.0, 9.0) * (0.5 + (255.0 - values) / 255.0)
    values = values + rng.standard_normal(values.shape).astype(np.float32) * sigma
    return np.clip(np.round(values), 0, 255).astype(np.uint8)


def _border(pixels: np.ndarray, rng) -> np.ndarray:
    out, side = pixels.copy(), pixels.shape[0]
    value = 0 if rng.random() < 0.6 else int(rng.integers(200, 256))
    sides = rng.choice(4, size=int(rng.integers(1, 5)), replace=False)
    for edge in sides:
        width = max(1, int(round(side * rng.uniform(0.03, 0.12))))
        if edge == 0:
            out[:width] = value
        elif edge == 1:
            out[-width:] = value
        elif edge == 2:
            out[:, :width] = value
        else:
            out[:, -width:] = value
    return out


def _markers(pixels: np.ndarray, rng) -> np.ndarray:
    side = pixels.shape[0]
    band = int(side * MARKER_BAND)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(6, int(side * rng.uniform(0.05, 0.08))))
    for corner in rng.choice(4, size=int(rng.integers(1, 3)), replace=False):
        text = _MARKER_TEXT[int(rng.integers(len(_MARKER_TEXT)))]
        box = draw.textbbox((0, 0), text, font=font)
        width, height = box[2] - box[0], box[3] - box[1]
        # Keep the whole text inside the corner's band: shrink the word list to what fits.
        if width > band or height > band:
            text = text[0]
            box = draw.textbbox((0, 0), text, font=font)
            width, height = box[2] - box[0], box[3] - box[1]
        margin = max(1, side // 50)
        x = margin if corner in (0, 2) else side - margin - width
        y = margin if corner in (0, 1) else side - margin - height
        draw.text((x - box[0], y - box[1]), text, fill=int(rng.integers(220, 256)), font=font)
    out = np.asarray(image, dtype=np.uint8).copy()
    # Nothing past the band: a glyph's anti-aliased edge that crossed it is put back.
    centre = slice(band, side - band)
    out[centre, centre] = pixels[centre, centre]
    return out


_STEPS = {
    "resampling": _resampling, "jpeg": _jpeg, "bit_depth": _bit_depth, "window_gamma": _window_gamma,
    "blur_sharpen": _blur_sharpen, "noise": _noise, "border": _border, "markers": _markers,
}
# A chain meets the steps as a film does: collimation and markers at acquisition, the
# detector's blur and noise, the processing's tone curve, then resampling and storage.
_CHAIN_ORDER = ("border", "markers", "blur_sharpen", "noise", "window_gamma", "resampling", "bit_depth", "jpeg")
