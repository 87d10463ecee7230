"""Deterministic 3-class chest-X-ray-like phantoms: the demo data and the tests' data.

Each phantom has a body outline, two dark lung fields, ribs, mediastinum, heart and
spine. The class signal is an opacity in a known place, so a Grad-CAM test can check
that a model looks where the disease is:

- ``COVID``: patchy ground-glass opacities in the lower peripheral zones of both lungs;
- ``Viral_Pneumonia``: streaky opacities in the upper perihilar zones of both lungs;
- ``Normal``: none.

Position, scale, tilt, lung sizes, exposure, contrast, noise, rib phase, collimator
margins and the side marker vary per image, so a model cannot memorise one picture and
the leakage audit (``data.audit``) finds (almost) no near-duplicates among the demo
images: faint opacities can bring a diseased phantom within the hash threshold of a
``Normal`` one (docs/first-run.md).

The demo set's classes overlap, as real films do: each diseased image's opacities
have a severity drawn from ``DEMO_SEVERITY``, so the faintest look like ``Normal``
and even a good model makes errors (and its confidence intervals have a width).
"""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from data.errors import UserError

CLASS_NAMES = ("COVID", "Normal", "Viral_Pneumonia")

# Bump when the pictures change, so old demo folders are rewritten, not reused.
_GENERATOR_VERSION = 3
_STAMP_NAME = "synthetic.json"
_MASKS_NAME = "lesion_masks.npz"
_METADATA_NAME = "metadata.csv"
_IMAGES_PER_PATIENT = 2

# Lesion centres as (row, distance from the midline towards the lung's outer edge), both
# as fractions of the image. COVID sits low and lateral, viral pneumonia high and medial.
_LESION_ZONES = {
    "COVID": {"rows": (0.60, 0.74), "offsets": (0.20, 0.28), "blobs": 5, "radius": (0.035, 0.06)},
    "Viral_Pneumonia": {
        "rows": (0.28, 0.44), "offsets": (0.09, 0.15), "blobs": 3, "radius": (0.05, 0.08),
    },
}
_MASK_LEVEL = 0.25  # share of an opacity's peak density that counts as lesion
DEMO_SEVERITY = (0.3, 1.0)
"""Range of the opacities' severity in the demo set (1 = the full density of ``phantom``'s default)."""


# The "marker" variant burns the label into a bright patterned square in a random corner,
# outside the chest region, like a hospital's text marker: the pattern names the class.
_MARKER_PATTERNS = {"COVID": "vertical", "Normal": "horizontal", "Viral_Pneumonia": "checker"}
SIGNALS = ("lesion", "marker")


def phantom(label: str, rng: np.random.Generator, size: int = 128,
            signal: str = "lesion", severity: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Draws one chest-X-ray-like phantom.

    Args:
        label: One of ``CLASS_NAMES``.
        rng: Source of all per-image variation; the same state gives the same image.
        size: Height and width in pixels.
        signal: ``"lesion"``: the label lives only in the lung opacities (the demo data);
            ``"marker"``: no opacities, the label is burnt into a corner marker, a
            shortcut outside the lungs (for testing shortcut probes).
        severity: Scales the opacities' density (0: invisible); the mask still
            marks where they are.

    Returns:
        ``(image, mask)``: a uint8 ``(size, size)`` image and a bool ``(size, size)``
        mask of the class-specific opacities (all False for ``Normal``).
    """
    if label not in CLASS_NAMES:
        raise ValueError(f"unknown class {label!r}; expected one of {CLASS_NAMES}")
    shift, zoom, degrees = rng.uniform(-0.04, 0.04, 2), rng.uniform(0.9, 1.1, 2), rng.uniform(-6, 6)
    rows, cols = _grid(size, shift, zoom, degrees)
    lungs = _lungs(rows, cols, scales=rng.uniform(0.9, 1.1, (2, 2)))
    density = _anatomy(rows, cols, lungs, rng)
    if signal not in SIGNALS:
        raise ValueError(f"unknown signal {signal!r}; expected one of {SIGNALS}")
    with_lesion = label != "Normal" and signal == "lesion"
    lesion = _lesions(label, rows, cols, lungs, rng) if with_lesion else np.zeros_like(rows)
    density += 0.6 * severity * lesion
    mask = lesion > _MASK_LEVEL
    # Uneven exposure at a coarse scale makes images differ as wholes (and to a
    # perceptual hash), fine mottling and noise make them differ in detail.
    density += (_texture(size, rng, cells=3) - 0.5) * 0.4 + _texture(size, rng, cells=16) * 0.05
    density += rng.normal(0.0, rng.uniform(0.01, 0.03), density.shape)
    framed = _collimate(density, rng)
    if signal == "marker":
        _burn_marker(framed, _MARKER_PATTERNS[label], rng)
    image = _expose(framed, rng)
    return image, mask


def _burn_marker(density: np.ndarray, pattern: str, rng) -> None:
    """A square of bright 2-pixel stripes or checks (side 1/8 of the image) in a random corner."""
    size = density.shape[0]
    side, gap = max(4, size // 8), max(1, size // 64)
    row, col = (int(gap + rng.integers(2) * (size - side - 2 * gap)) for _ in range(2))
    r, c = np.mgrid[:side, :side] // 2
    bright = {"vertical": c % 2 == 0, "horizontal": r % 2 == 0, "checker": (r + c) % 2 == 0}[pattern]
    density[row:row + side, col:col + side] = np.where(bright, 1.0, -0.1)


def phantom_arrays(n_per_class: int, size: int = 64, seed: int = 0, signal: str = "lesion"):
    """In-memory phantoms of every class: (uint8 images (N, size, size, 1), class indices (N,))."""
    images, labels = [], []
    for class_index, label in enumerate(CLASS_NAMES):
        for i in range(n_per_class):
            images.append(phantom(label, np.random.default_rng([seed, class_index, i]), size, signal)[0])
            labels.append(class_index)
    return np.stack(images)[..., None], np.array(labels)


def _grid(size: int, shift, zoom, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """Anatomy coordinates (about [0, 1)) of each pixel for a moved, scaled, tilted patient."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    rows, cols = np.meshgrid(coords, coords, indexing="ij")
    cos, sin = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    tilted_rows, tilted_cols = cos * rows - sin * cols, sin * rows + cos * cols
    return tilted_rows / zoom[0] + 0.5 - shift[0], tilted_cols / zoom[1] + 0.5 - shift[1]


def _ellipse(rows, cols, centre, radii, softness=0.15):
    """A soft-edged ellipse: 1 inside, 0 outside, a smooth ramp of relative width softness."""
    dist = np.sqrt(((rows - centre[0]) / radii[0]) ** 2 + ((cols - centre[1]) / radii[1]) ** 2)
    return np.clip((1.0 - dist) / softness, 0.0, 1.0)


def _lungs(rows, cols, scales: np.ndarray) -> np.ndarray:
    """Both lung fields, each with its own (height, width) scale; the left one (image
    right) is narrower where the heart sits."""
    right = _ellipse(rows, cols, (0.48, 0.32), np.array((0.31, 0.14)) * scales[0])
    left = _ellipse(rows, cols, (0.48, 0.68), np.array((0.31, 0.13)) * scales[1])
    return np.maximum(right, left)


def _anatomy(rows, cols, lungs, rng) -> np.ndarray:
    """Density of everything but the lesions: body, air in the lungs, ribs, heart, spine."""
    body = _ellipse(rows, cols, (0.58, 0.5), (0.62, rng.uniform(0.4, 0.5)), softness=0.08)
    ribs = _ribs(rows, cols, phase=rng.uniform(0, 1), count=rng.uniform(6.0, 7.5))
    heart_radii = np.array((0.13, 0.15)) * rng.uniform(0.9, 1.1, 2)
    heart = _ellipse(rows, cols, (0.66, 0.55), heart_radii, softness=0.3)
    mediastinum = np.clip(1.0 - np.abs(cols - 0.5) / 0.07, 0.0, 1.0) * (rows > 0.1)
    spine = (np.abs(cols - 0.5) < 0.035) * (0.8 + 0.2 * (np.sin(rows * 2 * np.pi * 12) > 0))
    density = 0.45 * body - 0.3 * lungs + 0.1 * ribs * body
    density += 0.25 * np.maximum(heart, mediastinum) * body + 0.12 * spine * body
    return density


def _ribs(rows, cols, phase: float, count: float) -> np.ndarray:
    """Curved bright bands that dip towards the sides, like posterior ribs."""
    curved = rows + 0.9 * (cols - 0.5) ** 2
    return np.clip(np.sin(2 * np.pi * (curved * count + phase)) * 2.0 - 0.6, 0.0, 1.0)


def _lesions(label, rows, cols, lungs, rng) -> np.ndarray:
    """Opacity density in [0, 1]: blobs in the class's zone of both lungs, kept inside them."""
    zone = _LESION_ZONES[label]
    density = np.zeros_like(rows)
    for side in (-1.0, 1.0):
        for _ in range(zone["blobs"]):
            centre = (rng.uniform(*zone["rows"]), 0.5 + side * rng.uniform(*zone["offsets"]))
            radius = rng.uniform(*zone["radius"])
            radii = (radius, radius * rng.uniform(0.7, 1.3))
            density = np.maximum(density, _ellipse(rows, cols, centre, radii, softness=0.8))
    # Mottling makes the COVID opacities patchy instead of solid discs.
    patchiness = _texture(rows.shape[0], rng, cells=10)
    return density * lungs * (0.6 + 0.4 * patchiness)


def _texture(size: int, rng, cells: int) -> np.ndarray:
    """Smooth random field in [0, 1]: a small random grid upsampled bilinearly."""
    coarse = Image.fromarray(rng.uniform(0, 255, (cells, cells)).astype(np.uint8))
    return np.asarray(coarse.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0


def _collimate(density, rng) -> np.ndarray:
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


def _expose(density, rng) -> np.ndarray:
    """Maps density to 8-bit grey with a per-image brightness, contrast and gamma."""
    contrast = rng.uniform(0.85, 1.15)
    offset = rng.uniform(0.04, 0.12)
    grey = np.clip(offset + contrast * density, 0.0, 1.0) ** rng.uniform(0.85, 1.15)
    return np.round(grey * 255).astype(np.uint8)


def write_demo_dataset(root, n_per_class: int = 120, size: int = 128, seed: int = 0) -> Path:
    """Writes a folder-per-class demo dataset of phantoms, or reuses one already there.

    Layout: ``root/<class>/<class>-<i>.png`` (8-bit grey, ``i`` from 1), ``root/metadata.csv``
    (``path,label,patient_id``; every two images of a class share a patient, so the
    grouped split has groups to keep together), ``root/lesion_masks.npz`` (bool masks
    keyed by the relative image path) and the stamp ``root/synthetic.json``.

    Args:
        root: Folder to write into; created if missing. It must be empty or hold an
            earlier demo dataset (which is replaced when the parameters differ).
        n_per_class: Images per class.
        size: Height and width in pixels.
        seed: Seed of the whole dataset; the same seed gives byte-identical files.

    Returns:
        ``root`` as a ``Path``.

    Raises:
        UserError: ``root`` holds files that are not a demo dataset.
    """
    root = Path(root)
    stamp = {"generator_version": _GENERATOR_VERSION, "n_per_class": n_per_class,
             "size": size, "seed": seed, "complete": True}
    previous = _read_stamp(root)
    if previous == stamp:
        return root
    _clear_for_rewrite(root, previous)
    # Stamp first as incomplete: a crash half way leaves a folder we know we may overwrite.
    _write_stamp(root, {**stamp, "complete": False})
    rows, masks = [], {}
    for class_index, label in enumerate(CLASS_NAMES):
        (root / label).mkdir(exist_ok=True)
        for i in range(1, n_per_class + 1):
            rng = np.random.default_rng([seed, class_index, i])
            severity = np.random.default_rng([seed, class_index, i, 1]).uniform(*DEMO_SEVERITY)
            image, mask = phantom(label, rng, size, severity=severity)
            relative = f"{label}/{label}-{i}.png"
            Image.fromarray(image).save(root / relative)
            patient = class_index * n_per_class + (i - 1) // _IMAGES_PER_PATIENT + 1
            rows.append((relative, label, f"P{patient:04d}"))
            masks[relative] = mask
    _write_metadata(root / _METADATA_NAME, rows)
    np.savez_compressed(root / _MASKS_NAME, **masks)
    _write_stamp(root, stamp)
    return root


def _read_stamp(root: Path) -> dict | None:
    """The parameters of the demo dataset in root, or None when root holds none."""
    try:
        return json.loads((root / _STAMP_NAME).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_stamp(root: Path, stamp: dict) -> None:
    (root / _STAMP_NAME).write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")


def _clear_for_rewrite(root: Path, previous: dict | None) -> None:
    """Empties an earlier demo dataset so no stale image survives; refuses foreign folders."""
    if previous is None:
        if root.exists() and any(root.iterdir()):
            raise UserError(
                f"{root} is not empty and holds no demo dataset; "
                "give an empty or new folder for the synthetic demo data"
            )
        root.mkdir(parents=True, exist_ok=True)
        return
    for label in CLASS_NAMES:
        shutil.rmtree(root / label, ignore_errors=True)
    for name in (_METADATA_NAME, _MASKS_NAME):
        (root / name).unlink(missing_ok=True)


def _write_metadata(path: Path, rows: list[tuple[str, str, str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("path", "label", "patient_id"))
        writer.writerows(rows)
