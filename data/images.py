"""Decode one image file (PNG, JPEG, DICOM) to a square uint8 grayscale array."""

import os
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cxr_tuner.data.errors import DecodeFailure

# LANCZOS: Pillow scales its support with the reduction factor, so downscaling a
# 3000-px radiograph to 224 px is properly anti-aliased (no moire from ribs) and keeps
# edges sharper than bilinear/box. reducing_gap lets Pillow first shrink by an integer
# factor with a cheap box filter, then finish with LANCZOS: the same look, much faster.
_RESAMPLE = Image.Resampling.LANCZOS
_REDUCING_GAP = 3.0
_HIGH_DEPTH_MODES = {"I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
_OPEN_LOCK = threading.Lock()


def decode_image(path, size: int) -> np.ndarray:
    """Decode ``path`` and resize it directly to a ``(size, size)`` uint8 grayscale array.

    The aspect ratio is not kept: chest X-rays are close to square and the models take
    square inputs; a plain resize keeps the whole field of view (no cropped lung apex).

    Args:
        path: A .png, .jpg, .jpeg or .dcm file.
        size: Side of the output square in pixels.

    Raises:
        DecodeFailure: The file is empty, truncated, not an image, or too large.
    """
    path = Path(path)
    if os.path.getsize(path) == 0:
        raise DecodeFailure("zero-byte file")
    if path.suffix.lower() == ".dcm":
        pixels = _read_dicom(path)
    else:
        pixels = _read_with_pillow(path, size)
    resized = Image.fromarray(pixels).resize((size, size), _RESAMPLE, reducing_gap=_REDUCING_GAP)
    return np.asarray(resized, dtype=np.uint8)


def _read_dicom(path: Path) -> np.ndarray:
    from cxr_tuner.data.dicom import read_dicom  # lazy: pydicom is only needed for DICOM data

    try:
        pixels, _patient_id = read_dicom(path)
    except DecodeFailure:
        raise
    except Exception as error:  # pydicom raises many types for a bad file
        raise DecodeFailure(f"unreadable DICOM: {error}") from error
    return np.asarray(pixels, dtype=np.uint8)


def _read_with_pillow(path: Path, size: int) -> np.ndarray:
    try:
        # Pillow warns between its limit and twice it; _check_bomb refuses those instead.
        # catch_warnings swaps process-wide filters, so threads take turns; opening only
        # reads the header, decoding (the slow part) runs in parallel.
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            _check_bomb(image)
            if image.format == "JPEG":
                image.draft("L", (size, size))  # let libjpeg decode at a reduced scale
            image.load()
            return _to_gray_uint8(ImageOps.exif_transpose(image))
    except DecodeFailure:
        raise
    except Image.DecompressionBombError as error:
        limit = Image.MAX_IMAGE_PIXELS
        raise DecodeFailure(f"decompression bomb: more than {limit} pixels") from error
    except UnidentifiedImageError as error:
        raise DecodeFailure("not an image") from error
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        if "truncated" in str(error).lower() or isinstance(error, EOFError):
            raise DecodeFailure("truncated image") from error
        raise DecodeFailure(f"unreadable image: {error}") from error


def _check_bomb(image: Image.Image) -> None:
    # Pillow only warns between MAX_IMAGE_PIXELS and twice that; we refuse from the limit,
    # since no radiograph is near 89 Mpx and decoding one could exhaust memory.
    width, height = image.size
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > limit:
        raise DecodeFailure(f"decompression bomb: {width}x{height} pixels")


def _to_gray_uint8(image: Image.Image) -> np.ndarray:
    if image.mode in _HIGH_DEPTH_MODES:
        return _scale_to_uint8(np.asarray(image, dtype=np.float64))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become black, the background of a radiograph.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode == "CMYK":
        image = image.convert("RGB")
    return np.asarray(image.convert("L"), dtype=np.uint8)


def _scale_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Stretch a 16-bit/int/float image's own min..max to 0..255.

    Not ``>> 8``: medical 16-bit PNGs usually hold 10-12-bit data (e.g. 0..4095), which
    a blind shift would crush into 16 grey levels of a near-black image.
    """
    low, high = float(pixels.min()), float(pixels.max())
    if high <= low:
        return np.zeros(pixels.shape, dtype=np.uint8)
    return np.round((pixels - low) * (255.0 / (high - low))).astype(np.uint8)
