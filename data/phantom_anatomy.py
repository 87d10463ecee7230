"""What the phantom generators draw alike: the image grid, lungs, heart, spine, ribs, texture, collimation, exposure.

Shared by the 3-class demo (`data.synthetic`) and the multi-label one (`data.synthetic_findings`).
"""

import numpy as np
from PIL import Image

MASK_LEVEL = 0.25  # share of an opacity's peak density that counts as lesion

def grid(size: int, shift, zoom, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """Anatomy coordinates (about [0, 1)) of each pixel for a moved, scaled, tilted patient."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    rows, cols = np.meshgrid(coords, coords, indexing="ij")
    cos, sin = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    tilted_rows, tilted_cols = cos * rows - sin * cols, sin * rows + cos * cols
    return tilted_rows / zoom[0] + 0.5 - shift[0], tilted_cols / zoom[1] + 0.5 - shift[1]


def ellipse(rows, cols, centre, radii, softness=0.15):
    """A soft-edged ellipse: 1 inside, 0 outside, a smooth ramp of relative width softness."""
    dist = np.sqrt(((rows - centre[0]) / radii[0]) ** 2 + ((cols - centre[1]) / radii[1]) ** 2)
    return np.clip((1.0 - dist) / softness, 0.0, 1.0)


def lung_fields(rows, cols, scales: np.ndarray) -> np.ndarray:
    """Both lung fields, each with its own (height, width) scale; the left one (image
    right) is narrower where the heart sits."""
    return np.maximum(*lung_sides(rows, cols, scales))


LUNG_CENTRES = ((0.48, 0.32), (0.48, 0.68))  # (row, col) of the right and the left lung


def lung_radii(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.array((0.31, 0.14)) * scales[0], np.array((0.31, 0.13)) * scales[1]


def lung_sides(rows, cols, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The right and the left lung field (image left and right), apart."""
    return tuple(ellipse(rows, cols, centre, radii) for centre, radii in zip(LUNG_CENTRES, lung_radii(scales)))


def anatomy(rows, cols, lungs, rng, heart_scale=(1.0, 1.0)) -> np.ndarray:
    """Density of everything but the lesions: body, air in the lungs, ribs, heart, spine;
    ``heart_scale`` (height, width) enlarges the heart (cardiomegaly)."""
    body = ellipse(rows, cols, (0.58, 0.5), (0.62, rng.uniform(0.4, 0.5)), softness=0.08)
    ribs = rib_cage(rows, cols, phase=rng.uniform(0, 1), count=rng.uniform(6.0, 7.5))
    heart_radii = np.array((0.13, 0.15)) * rng.uniform(0.9, 1.1, 2) * np.asarray(heart_scale)
    heart = ellipse(rows, cols, (0.66, 0.55), heart_radii, softness=0.3)
    mediastinum = np.clip(1.0 - np.abs(cols - 0.5) / 0.07, 0.0, 1.0) * (rows > 0.1)
    spine = (np.abs(cols - 0.5) < 0.035) * (0.8 + 0.2 * (np.sin(rows * 2 * np.pi * 12) > 0))
    density = 0.45 * body - 0.3 * lungs + 0.1 * ribs * body
    density += 0.25 * np.maximum(heart, mediastinum) * body + 0.12 * spine * body
    return density


def rib_cage(rows, cols, phase: float, count: float) -> np.ndarray:
    """Curved bright bands that dip towards the sides, like posterior ribs."""
    curved = rows + 0.9 * (cols - 0.5) ** 2
    return np.clip(np.sin(2 * np.pi * (curved * count + phase)) * 2.0 - 0.6, 0.0, 1.0)


def texture(size: int, rng, cells: int) -> np.ndarray:
    """Smooth random field in [0, 1]: a small random grid upsampled bilinearly."""
    coarse = Image.fromarray(rng.uniform(0, 255, (cells, cells)).astype(np.uint8))
    return np.asarray(coarse.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0


def collimate(density, rng) -> np.ndarray:
    """Dark collimator margins of random width and a bright side marker, as on real films;
    outside the lungs, they make images differ as wholes without touching the lesions."""
    size = density.shape[0]
    top, bottom, left, right = (rng.uniform(0.0, 0.1, 4) * size).astype(int)
    framed = np.full_like(density, -0.1)
    framed[top:size - bottom, left:size - right] = density[top:size - bottom, left:size - right]
    row = int(rng.uniform(0.02, 0.2) * size)
    col = int(rng.choice([rng.uniform(0.03, 0.12), rng.uniform(0.8, 0.9)]) * size)
    framed[row:row + max(2, size // 16), col:col + max(2, size // 20)] = 0.9
    return framed


def expose(density, rng) -> np.ndarray:
    """Maps density to 8-bit grey with a per-image brightness, contrast and gamma."""
    contrast = rng.uniform(0.85, 1.15)
    offset = rng.uniform(0.04, 0.12)
    grey = np.clip(offset + contrast * density, 0.0, 1.0) ** rng.uniform(0.85, 1.15)
    return np.round(grey * 255).astype(np.uint8)
