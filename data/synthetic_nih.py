"""An NIH ChestX-ray14 look-alike label file (``Data_Entry_2017.csv``) and its films, for readers and timing benches."""

import csv
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from cxr_tuner.data.synthetic import phantom

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
