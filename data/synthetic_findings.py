"""Multi-label phantoms: several findings per film, drawn independently but for one co-occurrence,
on patients that hold several films (the multi-label demo and the tests' data)."""

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from cxr_tuner.data.demo_folder import FILMS_FOLDER, GENERATOR_VERSION, LABELS_NAME, clear_for_rewrite, read_stamp, write_stamp
from cxr_tuner.data.phantom_anatomy import (LUNG_CENTRES, MASK_LEVEL, anatomy, collimate, ellipse, expose, grid,
                                            lung_radii, lung_sides, texture)

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

MULTILABEL_CSV = LABELS_NAME
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
    rows, cols = grid(size, shift, zoom, degrees)
    scales = patient_rng.uniform(0.9, 1.1, (2, 2))
    sides = lung_sides(rows, cols, scales)
    lungs = np.maximum(*sides)
    heart_scale = (1.0, 1.0)
    if "Cardiomegaly" in findings:
        heart_scale = (1.0 + 0.1 * strength["Cardiomegaly"], 1.0 + 0.45 * strength["Cardiomegaly"])
    anatomy_state = patient_rng.bit_generator.state
    density = anatomy(rows, cols, lungs, patient_rng, heart_scale)
    places = {name: np.random.default_rng(patient_rng.integers(2**32, size=2)) for name in MULTILABEL_FINDINGS}
    shapes = {name: np.random.default_rng(film_rng.integers(2**32, size=2)) for name in MULTILABEL_FINDINGS}
    masks = {}
    if "Cardiomegaly" in findings:
        patient_rng.bit_generator.state = anatomy_state
        normal = anatomy(rows, cols, lungs, patient_rng)
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
        masks["Consolidation"] = patch > MASK_LEVEL
    if "Nodule" in findings:
        nodule = _nodule(rows, cols, places["Nodule"])
        density += 0.45 * strength["Nodule"] * nodule
        masks["Nodule"] = nodule > MASK_LEVEL
    density += (texture(size, film_rng, cells=3) - 0.5) * 0.3 + texture(size, film_rng, cells=16) * 0.04
    density += film_rng.normal(0.0, film_rng.uniform(0.01, 0.025), density.shape)
    image = expose(collimate(density, film_rng), film_rng)
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
    centre = np.array(LUNG_CENTRES[side])
    radii = lung_radii(scales)[side]
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
        patch = np.maximum(patch, ellipse(rows, cols, centre, (radius, radius * rng.uniform(0.8, 1.2)), softness=0.5))
    return patch * sides[side] * (0.75 + 0.25 * texture(rows.shape[0], rng, cells=12))


def _nodule(rows, cols, place) -> np.ndarray:
    """A small round opacity in [0, 1] with a sharp edge, inside one lung."""
    side = int(place.integers(2))
    centre = (place.uniform(0.3, 0.62), 0.5 + (-1 if side == 0 else 1) * place.uniform(0.12, 0.24))
    radius = place.uniform(0.03, 0.045)
    return ellipse(rows, cols, centre, (radius, radius), softness=0.35)


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
    stamp = {"generator_version": GENERATOR_VERSION, "kind": "multilabel", "n_films": n_films,
             "size": size, "seed": seed, "min_positive_patients": min_positive_patients,
             "prevalences": dict(zip(MULTILABEL_FINDINGS, _prevalences(prevalences).tolist())),
             "complete": True}
    previous = read_stamp(root)
    if previous == stamp:
        return root
    clear_for_rewrite(root, previous)
    write_stamp(root, {**stamp, "complete": False})
    labels, patients = multilabel_findings(n_films, seed, prevalences, min_positive_patients)
    (root / FILMS_FOLDER).mkdir()
    rows = []
    for i, (findings, patient) in enumerate(zip(labels, patients), start=1):
        shown = [name for name, on in zip(MULTILABEL_FINDINGS, findings) if on]
        strength = np.random.default_rng([seed, 13, i]).uniform(*MULTILABEL_SEVERITY, len(MULTILABEL_FINDINGS))
        image, _ = multilabel_phantom(shown, np.random.default_rng([seed, 11, int(patient)]),
                                      np.random.default_rng([seed, 12, i]), size,
                                      severity=dict(zip(MULTILABEL_FINDINGS, strength)))
        relative = f"{FILMS_FOLDER}/film-{i:04d}.png"
        Image.fromarray(image).save(root / relative)
        rows.append((relative, *(int(v) for v in findings), f"P{int(patient) + 1:04d}"))
    with (root / LABELS_NAME).open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("path", *MULTILABEL_FINDINGS, "patient_id"))
        writer.writerows(rows)
    write_stamp(root, stamp)
    return root
