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

The multi-label mode (``write_multilabel_demo``) draws films that show any set of five
findings (``MULTILABEL_FINDINGS``), each with its own signal, of patients who hold
several films; ``write_nih_label_file`` writes a label file in NIH ChestX-ray14's layout.
"""

import csv
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from cxr_tuner.data.errors import UserError

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
    return np.maximum(*_lung_sides(rows, cols, scales))


_LUNG_CENTRES = ((0.48, 0.32), (0.48, 0.68))  # (row, col) of the right and the left lung


def _lung_radii(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.array((0.31, 0.14)) * scales[0], np.array((0.31, 0.13)) * scales[1]


def _lung_sides(rows, cols, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The right and the left lung field (image left and right), apart."""
    return tuple(_ellipse(rows, cols, centre, radii) for centre, radii in zip(_LUNG_CENTRES, _lung_radii(scales)))


def _anatomy(rows, cols, lungs, rng, heart_scale=(1.0, 1.0)) -> np.ndarray:
    """Density of everything but the lesions: body, air in the lungs, ribs, heart, spine;
    ``heart_scale`` (height, width) enlarges the heart (cardiomegaly)."""
    body = _ellipse(rows, cols, (0.58, 0.5), (0.62, rng.uniform(0.4, 0.5)), softness=0.08)
    ribs = _ribs(rows, cols, phase=rng.uniform(0, 1), count=rng.uniform(6.0, 7.5))
    heart_radii = np.array((0.13, 0.15)) * rng.uniform(0.9, 1.1, 2) * np.asarray(heart_scale)
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
    for folder in (*CLASS_NAMES, _FILMS_FOLDER):  # either kind of demo dataset
        shutil.rmtree(root / folder, ignore_errors=True)
    for name in (_METADATA_NAME, _MASKS_NAME, _LABELS_NAME):
        (root / name).unlink(missing_ok=True)


def _write_metadata(path: Path, rows: list[tuple[str, str, str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("path", "label", "patient_id"))
        writer.writerows(rows)


# ---------------------------------------------------------------------------------------
# Multi-label findings: several findings per film, drawn independently but for one
# co-occurrence, on patients that hold several films.

MULTILABEL_FINDINGS = ("Effusion", "Cardiomegaly", "Consolidation", "Nodule", "Pneumothorax")
"""The multi-label phantoms' findings, in the order of ``labels.csv``'s columns:

- ``Effusion``: fluid at one or both lung bases, its surface a meniscus that climbs
  towards the chest wall;
- ``Cardiomegaly``: a heart shadow 1.2-1.45 times as wide (and 1.1 times as high);
- ``Consolidation``: a dense patchy opacity of a few overlapping blobs in one lung;
- ``Nodule``: one small round opacity with a sharp edge;
- ``Pneumothorax``: a dark rim at one lung's apex and outer edge without lung markings,
  bounded by the bright line of the collapsed lung's edge.
"""
MULTILABEL_PREVALENCES = {"Effusion": 0.30, "Cardiomegaly": 0.15, "Consolidation": 0.08,
                          "Nodule": 0.03, "Pneumothorax": 0.01}
"""Share of films with each finding (before the demo's floor of positive patients)."""
MULTILABEL_COOCCURRENCE = {"Effusion": ("Cardiomegaly", 2.0)}
"""Finding: (finding it goes with, lift). A patient with Cardiomegaly has Effusion with
twice its prevalence (0.60 for 0.30); patients without have it less often (0.25), so
the share over all films stays the prevalence."""
MULTILABEL_SEVERITY = (0.5, 1.0)
"""Range of each finding's severity on a film (1 = the full signal of ``multilabel_phantom``)."""
DEMO_FILMS = 600
DEMO_MIN_POSITIVE_PATIENTS = 60

MULTILABEL_CSV = "labels.csv"
_LABELS_NAME = MULTILABEL_CSV
_FILMS_FOLDER = "images"
_FILMS_PER_PATIENT = (1, 4)
_PERSISTENCE = 0.8  # chance that a film shows its patient's state of a finding, else a fresh draw


def multilabel_findings(n_films: int, seed: int = 0, prevalences=None,
                        min_positive_patients: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Draws the findings of ``n_films`` films and the patient of each.

    Patients hold 1-4 films (uniformly), in order. Each patient has a state of every
    finding, drawn with ``prevalences`` and ``MULTILABEL_COOCCURRENCE``; each finding of
    each of their films is that state with probability 0.8, else drawn afresh from the
    same distribution. So a finding's share of films is its prevalence, and a patient's
    films tend to share findings: a split by film puts the same patient's findings on
    both sides.

    Args:
        n_films: Number of films.
        seed: The same seed gives the same findings.
        prevalences: Finding -> share of films, for some or all of
            ``MULTILABEL_FINDINGS``; the others keep ``MULTILABEL_PREVALENCES``.
        min_positive_patients: Every finding is given to at least this many patients
            (or all): patients without it are picked at random and one of their films
            gets it, independently of the film's other findings. This raises the rare
            findings' share above their prevalence.

    Returns:
        ``(labels, patients)``: uint8 0/1 ``(n_films, 5)`` in ``MULTILABEL_FINDINGS``
        order, and each film's patient index ``(n_films,)`` counting from 0.
    """
    p = _prevalences(prevalences)
    rng = np.random.default_rng([seed, 10])
    sizes = rng.integers(_FILMS_PER_PATIENT[0], _FILMS_PER_PATIENT[1] + 1, max(n_films, 1))
    patients = np.repeat(np.arange(sizes.size), sizes)[:n_films]
    n_patients = int(patients[-1]) + 1 if n_films else 0
    state, fresh = _draw_findings(rng, n_patients, p), _draw_findings(rng, n_films, p)
    labels = np.where(rng.random((n_films, len(p))) < _PERSISTENCE, state[patients], fresh)
    for column in range(len(p)):
        positive = np.unique(patients[labels[:, column]])
        missing = min_positive_patients - positive.size
        if missing > 0:
            chosen = rng.permutation(np.setdiff1d(np.arange(n_patients), positive))[:missing]
            for patient in chosen:
                films = np.flatnonzero(patients == patient)
                labels[films[rng.integers(films.size)], column] = True
    return labels.astype(np.uint8), patients


def _prevalences(given) -> np.ndarray:
    """The prevalence of each of ``MULTILABEL_FINDINGS``, in order, with the given ones checked."""
    given = dict(given or {})
    unknown = set(given) - set(MULTILABEL_FINDINGS)
    if unknown:
        raise ValueError(f"unknown findings {sorted(unknown)}; expected some of {MULTILABEL_FINDINGS}")
    merged = {**MULTILABEL_PREVALENCES, **given}
    if not all(0.0 <= float(v) <= 1.0 for v in merged.values()):
        raise ValueError(f"prevalences must lie in [0, 1], got {merged}")
    return np.array([float(merged[name]) for name in MULTILABEL_FINDINGS])


def _draw_findings(rng, n: int, p: np.ndarray) -> np.ndarray:
    """``(n, 5)`` bool findings: independent with shares ``p``, but for the co-occurrences."""
    chance = np.broadcast_to(p, (n, p.size)).copy()
    draws = rng.random((n, p.size))
    for finding, (partner, lift) in MULTILABEL_COOCCURRENCE.items():
        i, j = MULTILABEL_FINDINGS.index(finding), MULTILABEL_FINDINGS.index(partner)
        with_partner = min(1.0, lift * p[i])
        without = max(0.0, (p[i] - p[j] * with_partner) / (1.0 - p[j])) if p[j] < 1 else 0.0
        chance[:, i] = np.where(draws[:, j] < p[j], with_partner, without)
    return draws < chance


def multilabel_phantom(findings, patient_rng: np.random.Generator, film_rng: np.random.Generator,
                       size: int = 128, severity=1.0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Draws one film with any set of ``MULTILABEL_FINDINGS``.

    Args:
        findings: The names of the findings the film shows (any of ``MULTILABEL_FINDINGS``).
        patient_rng: The patient's anatomy and where each finding sits: a generator in
            the same state for every film of one patient gives the same chest with its
            findings in the same places.
        film_rng: What differs between films of a patient: small shifts, the findings'
            shapes, texture, noise, collimation and exposure.
        size: Height and width in pixels.
        severity: Scales every finding's signal (0: invisible), or a dict finding -> scale.

    Returns:
        ``(image, masks)``: a uint8 ``(size, size)`` image and, for each finding shown,
        a bool ``(size, size)`` mask of where it changed the film.
    """
    findings = set(findings)
    unknown = findings - set(MULTILABEL_FINDINGS)
    if unknown:
        raise ValueError(f"unknown findings {sorted(unknown)}; expected some of {MULTILABEL_FINDINGS}")
    strength = {name: float(severity[name] if isinstance(severity, dict) else severity)
                for name in MULTILABEL_FINDINGS}
    # The patient: pose, lungs, anatomy and the places of every finding (drawn whether
    # shown or not, so they do not depend on which findings a film shows).
    shift = patient_rng.uniform(-0.04, 0.04, 2) + film_rng.uniform(-0.01, 0.01, 2)
    zoom = patient_rng.uniform(0.9, 1.1, 2)
    degrees = patient_rng.uniform(-6, 6) + film_rng.uniform(-1.5, 1.5)
    rows, cols = _grid(size, shift, zoom, degrees)
    scales = patient_rng.uniform(0.9, 1.1, (2, 2))
    sides = _lung_sides(rows, cols, scales)
    lungs = np.maximum(*sides)
    heart_scale = (1.0, 1.0)
    if "Cardiomegaly" in findings:
        heart_scale = (1.0 + 0.1 * strength["Cardiomegaly"], 1.0 + 0.45 * strength["Cardiomegaly"])
    anatomy_state = patient_rng.bit_generator.state
    density = _anatomy(rows, cols, lungs, patient_rng, heart_scale)
    places = {name: np.random.default_rng(patient_rng.integers(2**32, size=2)) for name in MULTILABEL_FINDINGS}
    shapes = {name: np.random.default_rng(film_rng.integers(2**32, size=2)) for name in MULTILABEL_FINDINGS}
    masks = {}
    if "Cardiomegaly" in findings:
        patient_rng.bit_generator.state = anatomy_state
        normal = _anatomy(rows, cols, lungs, patient_rng)
        masks["Cardiomegaly"] = np.abs(density - normal) > 0.05
    markings = _markings(rows, cols, film_rng) * lungs
    if "Pneumothorax" in findings:
        rim, edge = _pneumothorax(rows, cols, sides, scales, places["Pneumothorax"], strength["Pneumothorax"])
        markings *= 1.0 - rim
        density += -0.12 * rim + 0.25 * edge
        masks["Pneumothorax"] = (rim > 0.5) | (edge > 0.5)
    density += 0.08 * markings
    if "Effusion" in findings:
        fluid = _effusion(rows, cols, sides, places["Effusion"], shapes["Effusion"])
        density += 0.4 * strength["Effusion"] * fluid
        masks["Effusion"] = fluid > 0.5
    if "Consolidation" in findings:
        patch = _consolidation(rows, cols, sides, places["Consolidation"], shapes["Consolidation"])
        density += 0.5 * strength["Consolidation"] * patch
        masks["Consolidation"] = patch > _MASK_LEVEL
    if "Nodule" in findings:
        nodule = _nodule(rows, cols, places["Nodule"])
        density += 0.45 * strength["Nodule"] * nodule
        masks["Nodule"] = nodule > _MASK_LEVEL
    density += (_texture(size, film_rng, cells=3) - 0.5) * 0.3 + _texture(size, film_rng, cells=16) * 0.04
    density += film_rng.normal(0.0, film_rng.uniform(0.01, 0.025), density.shape)
    image = _expose(_collimate(density, film_rng), film_rng)
    return image, masks


def _side_lateral(cols, side: int):
    """Distance from the midline towards the outer edge of lung ``side`` (0 right, 1 left)."""
    return (0.5 - cols) if side == 0 else (cols - 0.5)


def _markings(rows, cols, rng) -> np.ndarray:
    """Lung markings in [0, 1]: thin vessel-like streaks fanning out from both hila."""
    streaks = np.zeros_like(rows)
    for side, hilum in enumerate((0.42, 0.58)):
        angle = np.arctan2(rows - 0.45, cols - hilum)
        distance = np.hypot(rows - 0.45, cols - hilum)
        fan = np.sin(angle * rng.uniform(14, 18) + rng.uniform(0, 2 * np.pi) + 6 * distance)
        streaks = np.maximum(streaks, np.clip(fan * 3 - 2, 0, 1) * np.clip(1 - distance / 0.35, 0, 1))
    return streaks


def _pneumothorax(rows, cols, sides, scales, place, strength: float):
    """``(rim, edge)``: the air between chest wall and the collapsed lung at one lung's apex
    and outer edge, and the thin bright line of the collapsed lung's edge."""
    side = int(place.integers(2))
    centre = np.array(_LUNG_CENTRES[side])
    radii = _lung_radii(scales)[side]
    collapse = 1.0 - strength * place.uniform(0.2, 0.3)
    # The collapsed lung shrinks towards the hilum (down and towards the midline).
    inner_centre = centre + np.array((radii[0] * (1 - collapse), (1 if side == 0 else -1) * radii[1] * (1 - collapse)))
    inner_radii = radii * collapse
    dist = np.sqrt(((rows - inner_centre[0]) / inner_radii[0]) ** 2 + ((cols - inner_centre[1]) / inner_radii[1]) ** 2)
    rim = sides[side] * np.clip((dist - 1.0) / 0.05, 0.0, 1.0)
    edge = np.clip(1.0 - np.abs(dist - 1.0) / 0.04, 0.0, 1.0) * sides[side]
    return rim, edge


def _effusion(rows, cols, sides, place, rng) -> np.ndarray:
    """Fluid in [0, 1] filling one or both lung bases below a meniscus that rises laterally."""
    fluid = np.zeros_like(rows)
    both = place.random() < 0.35
    first = int(place.integers(2))
    level = place.uniform(0.6, 0.68)
    for side in (0, 1):
        if side != first and not both:
            continue
        lateral = np.clip(_side_lateral(cols, side) - 0.12, 0.0, None)
        surface = level + rng.uniform(-0.01, 0.01) - 2.5 * lateral ** 2
        fluid = np.maximum(fluid, np.clip((rows - surface) / 0.015, 0.0, 1.0) * sides[side])
    return fluid


def _consolidation(rows, cols, sides, place, rng) -> np.ndarray:
    """A dense patch in [0, 1]: three overlapping blobs in one lung's mid zone, mottled."""
    side = int(place.integers(2))
    row, offset = place.uniform(0.35, 0.6), place.uniform(0.14, 0.22)
    centre_col = 0.5 + (-offset if side == 0 else offset)
    patch = np.zeros_like(rows)
    for _ in range(3):
        centre = (row + rng.uniform(-0.04, 0.04), centre_col + rng.uniform(-0.03, 0.03))
        radius = rng.uniform(0.05, 0.07)
        patch = np.maximum(patch, _ellipse(rows, cols, centre, (radius, radius * rng.uniform(0.8, 1.2)), softness=0.5))
    return patch * sides[side] * (0.75 + 0.25 * _texture(rows.shape[0], rng, cells=12))


def _nodule(rows, cols, place) -> np.ndarray:
    """A small round opacity in [0, 1] with a sharp edge, inside one lung."""
    side = int(place.integers(2))
    centre = (place.uniform(0.3, 0.62), 0.5 + (-1 if side == 0 else 1) * place.uniform(0.12, 0.24))
    radius = place.uniform(0.03, 0.045)
    return _ellipse(rows, cols, centre, (radius, radius), softness=0.35)


def write_multilabel_demo(root, n_films: int = DEMO_FILMS, size: int = 128, seed: int = 0, prevalences=None,
                          min_positive_patients: int = DEMO_MIN_POSITIVE_PATIENTS) -> Path:
    """Writes a multi-label demo dataset of phantoms, or reuses one already there.

    Layout: ``root/images/film-<i>.png`` (8-bit grey, ``i`` from 1), ``root/labels.csv`` in
    the generic multi-hot layout (``path,<finding>...,patient_id``: the path relative to
    ``root``, one 0/1 column per finding of ``MULTILABEL_FINDINGS``) and the stamp
    ``root/synthetic.json``. Patients hold 1-4 films that share the patient's anatomy
    and mostly their findings (``multilabel_findings``), so a split by film leaks.

    The demo gives every finding to at least ``min_positive_patients`` patients by
    construction, so the rare findings are more common than their prevalence: with
    the defaults each of them still has 5 or more positive patients in each part of a
    70/15/15 split grouped by patient and stratified by finding.

    Args:
        root: Folder to write into; created if missing. It must be empty or hold an
            earlier demo dataset (which is replaced when the parameters differ).
        n_films: Number of films.
        size: Height and width in pixels.
        seed: Seed of the whole dataset; the same seed gives byte-identical files.
        prevalences: Finding -> share of films, for some of ``MULTILABEL_FINDINGS``
            (default ``MULTILABEL_PREVALENCES``).
        min_positive_patients: Floor of positive patients per finding (0: none).

    Returns:
        ``root`` as a ``Path``.

    Raises:
        UserError: ``root`` holds files that are not a demo dataset.
    """
    root = Path(root)
    stamp = {"generator_version": _GENERATOR_VERSION, "kind": "multilabel", "n_films": n_films,
             "size": size, "seed": seed, "min_positive_patients": min_positive_patients,
             "prevalences": dict(zip(MULTILABEL_FINDINGS, _prevalences(prevalences).tolist())),
             "complete": True}
    previous = _read_stamp(root)
    if previous == stamp:
        return root
    _clear_for_rewrite(root, previous)
    _write_stamp(root, {**stamp, "complete": False})
    labels, patients = multilabel_findings(n_films, seed, prevalences, min_positive_patients)
    (root / _FILMS_FOLDER).mkdir()
    rows = []
    for i, (findings, patient) in enumerate(zip(labels, patients), start=1):
        shown = [name for name, on in zip(MULTILABEL_FINDINGS, findings) if on]
        strength = np.random.default_rng([seed, 13, i]).uniform(*MULTILABEL_SEVERITY, len(MULTILABEL_FINDINGS))
        image, _ = multilabel_phantom(shown, np.random.default_rng([seed, 11, int(patient)]),
                                      np.random.default_rng([seed, 12, i]), size,
                                      severity=dict(zip(MULTILABEL_FINDINGS, strength)))
        relative = f"{_FILMS_FOLDER}/film-{i:04d}.png"
        Image.fromarray(image).save(root / relative)
        rows.append((relative, *(int(v) for v in findings), f"P{int(patient) + 1:04d}"))
    with (root / _LABELS_NAME).open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("path", *MULTILABEL_FINDINGS, "patient_id"))
        writer.writerows(rows)
    _write_stamp(root, stamp)
    return root


# ---------------------------------------------------------------------------------------
# An NIH ChestX-ray14 look-alike label file, for readers and timing benches.

NIH_FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
                "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")
NIH_NO_FINDING = "No Finding"
NIH_LABEL_FILE = "Data_Entry_2017.csv"
NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")
"""The header line of NIH's ``Data_Entry_2017.csv``, verbatim: the bracketed names hold
unquoted commas and the line ends in one (as does every row), so a CSV reader sees 12
fields, the last empty, and the last 4 values under split names."""
# NIH's counts of films with each finding, of its 112,120 films.
_NIH_COUNTS = {"Atelectasis": 11559, "Cardiomegaly": 2776, "Effusion": 13317, "Infiltration": 19894,
               "Mass": 5782, "Nodule": 6331, "Pneumonia": 1431, "Pneumothorax": 5302, "Consolidation": 4667,
               "Edema": 2303, "Emphysema": 2516, "Fibrosis": 1686, "Pleural_Thickening": 3385, "Hernia": 227}
_NIH_FILMS = 112_120
_NIH_FOLDER_FILMS = (4999,) + (10000,) * 10 + (7121,)  # images_001 ... images_012, in name order


def nih_folder(index: int) -> str:
    """The folder NIH ships its ``index``-th batch of films in (1-12), relative to the data root."""
    return f"images_{index:03d}/images"


def write_nih_label_file(root, n_rows: int, image_names=None, seed: int = 0, write_films: bool = True,
                         film_size: int = 32) -> Path:
    """Writes a ``Data_Entry_2017.csv`` in NIH ChestX-ray14's exact layout, and its films.

    Rows come in name order (``<patient:08d>_<follow-up:03d>.png``; patients hold one or
    more films, numbered from follow-up 0), and the films are spread over
    ``images_001/images/`` ... ``images_012/images/`` in NIH's proportions. Each finding
    of ``NIH_FINDINGS`` is drawn independently per film with its share in NIH; a film
    with none reads ``No Finding``; several are joined with ``|`` in alphabetical order.
    Age, gender, view and the original size and pixel spacing are plausible values.

    Every film is the same small PNG (one ``Normal`` phantom of ``film_size`` pixels, its
    bytes written again for each file): the files exist and decode, quickly enough to
    write 100,000 of them for a timing bench, but they carry no findings.

    Args:
        root: Data folder; created if missing. Its label file is overwritten.
        n_rows: Number of films (rows).
        image_names: The rows' ``Image Index`` values instead of NIH-style names
            (``n_rows`` of them); names of NIH's form give the rows' patient and follow-up.
        seed: The same seed gives the same files.
        write_films: Also write the films (else only the label file).
        film_size: Height and width of the films in pixels.

    Returns:
        The label file's path.
    """
    root = Path(root)
    rng = np.random.default_rng([seed, 20])
    patients, follow_ups = _nih_patients(rng, n_rows)
    if image_names is not None:
        image_names = [str(name) for name in image_names]
        if len(image_names) != n_rows:
            raise ValueError(f"{len(image_names)} image names for {n_rows} rows")
        for i, name in enumerate(image_names):
            stem = name.removesuffix(".png").split("_")
            if len(stem) == 2 and all(part.isdigit() for part in stem):
                patients[i], follow_ups[i] = int(stem[0]), int(stem[1])
    else:
        image_names = [f"{patient:08d}_{follow_up:03d}.png" for patient, follow_up in zip(patients, follow_ups)]
    shares = np.array([_NIH_COUNTS[name] / _NIH_FILMS for name in NIH_FINDINGS])
    findings = rng.random((n_rows, shares.size)) < shares
    ids = np.unique(patients)
    per_patient = {"age": dict(zip(ids, np.clip(rng.normal(47, 17, ids.size), 1, 95).astype(int))),
                   "gender": dict(zip(ids, np.where(rng.random(ids.size) < 0.56, "M", "F")))}
    view = np.where(rng.random(n_rows) < 0.6, "PA", "AP")
    shape = rng.choice([(2500, 2048), (2048, 2500), (2992, 2991), (3056, 2544), (2021, 2021)], n_rows)
    spacing = rng.choice([0.143, 0.139, 0.168], n_rows, p=[0.8, 0.15, 0.05])
    root.mkdir(parents=True, exist_ok=True)
    path = root / NIH_LABEL_FILE
    with path.open("w", newline="") as handle:
        handle.write(NIH_HEADER + "\n")
        writer = csv.writer(handle, lineterminator="\n")
        for i in range(n_rows):
            names = sorted(name for name, on in zip(NIH_FINDINGS, findings[i]) if on)
            patient = patients[i]
            writer.writerow((image_names[i], "|".join(names) or NIH_NO_FINDING, follow_ups[i], patient,
                             per_patient["age"][patient], per_patient["gender"][patient], view[i],
                             *shape[i], spacing[i], spacing[i], ""))
    if write_films:
        film = io.BytesIO()
        Image.fromarray(phantom("Normal", np.random.default_rng([seed, 21]), film_size)[0]).save(film, "PNG")
        film = film.getvalue()
        bounds = np.round(np.cumsum(_NIH_FOLDER_FILMS) / _NIH_FILMS * n_rows).astype(int)
        folders = [str(root / nih_folder(k)) for k in range(1, len(_NIH_FOLDER_FILMS) + 1)]
        for folder in folders:
            os.makedirs(folder, exist_ok=True)
        where = np.searchsorted(bounds, np.arange(n_rows), side="right")
        for folder, name in zip(where.tolist(), image_names):
            with open(os.path.join(folders[folder], name), "wb") as out:
                out.write(film)
    return path


def _nih_patients(rng, n_rows: int) -> tuple[list[int], list[int]]:
    """Patient ID (from 1) and follow-up number (from 0) of each of ``n_rows`` films."""
    sizes = rng.geometric(0.275, max(n_rows, 1))  # NIH: 3.6 films per patient on average
    patients = np.repeat(np.arange(1, sizes.size + 1), sizes)[:n_rows]
    starts = np.concatenate(([0], np.flatnonzero(np.diff(patients)) + 1)) if n_rows else np.array([], int)
    follow_ups = np.arange(n_rows) - np.repeat(starts, np.diff(np.append(starts, n_rows)))
    return patients.tolist(), follow_ups.tolist()
