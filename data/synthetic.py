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

The multi-label demo is `data.synthetic_findings`, an NIH ChestX-ray14 look-alike label
file `data.synthetic_nih`; what both kinds of phantom draw alike is `data.phantom_anatomy`,
and a demo folder's stamp `data.demo_folder`.
"""

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from cxr_tuner.data.demo_folder import (CLASS_NAMES, GENERATOR_VERSION, MASKS_NAME, METADATA_NAME, clear_for_rewrite,
                                        read_stamp, write_stamp)
from cxr_tuner.data.phantom_anatomy import MASK_LEVEL, anatomy, collimate, ellipse, expose, grid, lung_fields, texture

_IMAGES_PER_PATIENT = 2

# Lesion centres as (row, distance from the midline towards the lung's outer edge), both
# as fractions of the image. COVID sits low and lateral, viral pneumonia high and medial.
_LESION_ZONES = {
    "COVID": {"rows": (0.60, 0.74), "offsets": (0.20, 0.28), "blobs": 5, "radius": (0.035, 0.06)},
    "Viral_Pneumonia": {
        "rows": (0.28, 0.44), "offsets": (0.09, 0.15), "blobs": 3, "radius": (0.05, 0.08),
    },
}
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
    rows, cols = grid(size, shift, zoom, degrees)
    lungs = lung_fields(rows, cols, scales=rng.uniform(0.9, 1.1, (2, 2)))
    density = anatomy(rows, cols, lungs, rng)
    if signal not in SIGNALS:
        raise ValueError(f"unknown signal {signal!r}; expected one of {SIGNALS}")
    with_lesion = label != "Normal" and signal == "lesion"
    lesion = _lesions(label, rows, cols, lungs, rng) if with_lesion else np.zeros_like(rows)
    density += 0.6 * severity * lesion
    mask = lesion > MASK_LEVEL
    # Uneven exposure at a coarse scale makes images differ as wholes (and to a
    # perceptual hash), fine mottling and noise make them differ in detail.
    density += (texture(size, rng, cells=3) - 0.5) * 0.4 + texture(size, rng, cells=16) * 0.05
    density += rng.normal(0.0, rng.uniform(0.01, 0.03), density.shape)
    framed = collimate(density, rng)
    if signal == "marker":
        _burn_marker(framed, _MARKER_PATTERNS[label], rng)
    image = expose(framed, rng)
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




def _lesions(label, rows, cols, lungs, rng) -> np.ndarray:
    """Opacity density in [0, 1]: blobs in the class's zone of both lungs, kept inside them."""
    zone = _LESION_ZONES[label]
    density = np.zeros_like(rows)
    for side in (-1.0, 1.0):
        for _ in range(zone["blobs"]):
            centre = (rng.uniform(*zone["rows"]), 0.5 + side * rng.uniform(*zone["offsets"]))
            radius = rng.uniform(*zone["radius"])
            radii = (radius, radius * rng.uniform(0.7, 1.3))
            density = np.maximum(density, ellipse(rows, cols, centre, radii, softness=0.8))
    # Mottling makes the COVID opacities patchy instead of solid discs.
    patchiness = texture(rows.shape[0], rng, cells=10)
    return density * lungs * (0.6 + 0.4 * patchiness)


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
    stamp = {"generator_version": GENERATOR_VERSION, "n_per_class": n_per_class,
             "size": size, "seed": seed, "complete": True}
    previous = read_stamp(root)
    if previous == stamp:
        return root
    clear_for_rewrite(root, previous)
    # Stamp first as incomplete: a crash half way leaves a folder we know we may overwrite.
    write_stamp(root, {**stamp, "complete": False})
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
    _write_metadata(root / METADATA_NAME, rows)
    np.savez_compressed(root / MASKS_NAME, **masks)
    write_stamp(root, stamp)
    return root



def _write_metadata(path: Path, rows: list[tuple[str, str, str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("path", "label", "patient_id"))
        writer.writerows(rows)
