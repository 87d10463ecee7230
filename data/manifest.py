"""Find labelled images: folder-per-class trees (COVID-19 Radiography v1/v4, Kermany) or a CSV.

A folder tree's class is the innermost folder name that is not a known wrapper
(``images/`` of the v4 database, ``train|val|test/`` of Kermany; ``masks/`` are
skipped). The Kermany ``train|val|test`` folders are NOT used as the split: they are
not grouped by patient, and our own split is.
"""

import csv
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from cxr_tuner.data.errors import DecodeFailure, UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".dcm")
CSV_NAMES = ("metadata.csv", "manifest.csv")
_LAYOUTS_HELP = (
    "a folder per class (e.g. COVID/ Normal/ Viral_Pneumonia/, the COVID-19 Radiography "
    "Database v1 or v4 layout, or Kermany's train|val|test/NORMAL|PNEUMONIA), or a CSV "
    "with columns path,label[,patient_id]"
)
# Folders that wrap a class folder rather than name a class.
_WRAPPER_FOLDERS = {"images", "train", "val", "test", "training", "validation", "testing"}
_IGNORED_FOLDERS = {"masks", "__macosx"}
_KNOWN_LABELS = {
    "covid": "COVID",
    "covid 19": "COVID",
    "covid19": "COVID",
    "normal": "Normal",
    "viral pneumonia": "Viral_Pneumonia",
    "virus": "Viral_Pneumonia",
    "bacterial pneumonia": "Bacterial_Pneumonia",
    "bacteria": "Bacterial_Pneumonia",
    "lung opacity": "Lung_Opacity",
}
# CSV column spellings: the first one present is used; the rest are listed as ignored.
PATIENT_COLUMNS = ("patient_id", "patientid", "patient", "subject_id", "subjectid", "subject")
SOURCE_COLUMNS = ("source", "site", "hospital", "dataset")
# Kermany: person1_virus_6.jpeg (patient person1); NORMAL2-IM-1427-0001.jpeg (patient IM-1427).
_KERMANY_PERSON = re.compile(r"^(person\d+)_(virus|bacteria)_\d+$", re.IGNORECASE)
_KERMANY_IM = re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+$", re.IGNORECASE)


@dataclass(frozen=True)
class Example:
    """One labelled image.

    Attributes:
        path: Absolute path of the image file.
        label: Normalised class name (see `normalise_label`).
        group: Patient id when known (CSV column, Kermany file name, DICOM header),
            else "" (then the image is its own group).
        raw_label: The folder name or CSV label it came from, for printing the mapping;
            not part of equality.
        source: Where the image came from (a CSV's ``source``, ``site``, ``hospital`` or
            ``dataset`` column), else "": the source audit and per-source figures use it.
    """

    path: str
    label: str
    group: str = ""
    raw_label: str = field(default="", compare=False)
    source: str = ""


def normalise_label(name: str) -> str:
    """Map a folder or CSV class name to the project's class name.

    "COVID-19"/"covid" -> "COVID", "NORMAL" -> "Normal", "Viral Pneumonia" ->
    "Viral_Pneumonia", "Lung Opacity" -> "Lung_Opacity"; other names are title-cased
    words joined by "_".
    """
    words = re.sub(r"[\s_\-]+", " ", name).strip().lower()
    if words in _KNOWN_LABELS:
        return _KNOWN_LABELS[words]
    return "_".join(word.capitalize() for word in words.split())


def class_names(examples) -> list[str]:
    """The sorted class names present in ``examples``."""
    return sorted({example.label for example in examples})


def class_mapping(examples) -> dict[str, list[str]]:
    """Which raw folder/CSV names became which class: {class: sorted raw names}."""
    mapping = defaultdict(set)
    for example in examples:
        mapping[example.label].add(example.raw_label or example.label)
    return {label: sorted(raws) for label, raws in sorted(mapping.items())}


def discover(root) -> list[Example]:
    """List the labelled images under ``root``, sorted by path.

    Args:
        root: A folder-per-class tree, a CSV file ``path,label[,patient_id]`` (paths
            relative to the CSV's folder), or a folder holding ``metadata.csv`` or
            ``manifest.csv`` (then the CSV is used).

    Raises:
        UserError: The path is missing, holds no images, only one class, or a bad CSV.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise UserError(f"Data path {root} does not exist: pass a folder of images or a CSV.")
    if root.is_file():
        examples = _from_csv(root)
    else:
        csv_path = next((root / n for n in CSV_NAMES if (root / n).is_file()), None)
        examples = _from_csv(csv_path) if csv_path else _from_tree(root)
    _check_classes(root, examples)
    return sorted(examples, key=lambda example: example.path)


def _check_classes(root: Path, examples: list[Example]) -> None:
    if not examples:
        raise UserError(
            f"No images found under {root}: looked for {', '.join(IMAGE_EXTENSIONS)} files "
            f"in {_LAYOUTS_HELP}."
        )
    names = class_names(examples)
    if len(names) < 2:
        raise UserError(
            f"Only one class ({names[0]}) found under {root}: a classifier needs at least "
            f"two; put each class's images in its own folder ({_LAYOUTS_HELP})."
        )


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _from_tree(root: Path) -> list[Example]:
    examples = []
    for path in root.rglob("*"):
        if not (path.is_file() and _is_image(path)):
            continue
        folders = path.relative_to(root).parts[:-1]
        if any(f.lower() in _IGNORED_FOLDERS or f.startswith(".") for f in folders):
            continue
        class_folders = [f for f in folders if f.lower() not in _WRAPPER_FOLDERS]
        if not class_folders:
            continue  # an image outside any class folder has no label
        raw = class_folders[-1]
        label, raw = _kermany_label(raw, path.stem)
        group = _patient_from_name(path.stem) or _dicom_patient(path)
        examples.append(Example(str(path.resolve()), label, group, raw))
    return examples


def _kermany_label(folder: str, stem: str) -> tuple[str, str]:
    """Kermany's PNEUMONIA folder mixes viral and bacterial: the file name says which."""
    label = normalise_label(folder)
    if label == "Pneumonia":
        for word in ("virus", "bacteria"):
            if word in stem.lower():
                return normalise_label(word), f"{folder} ({word} in file name)"
    return label, folder


def _patient_from_name(stem: str) -> str:
    match = _KERMANY_PERSON.match(stem) or _KERMANY_IM.match(stem)
    return match.group(1) if match else ""


def _dicom_patient(path: Path) -> str:
    """A DICOM file's header Patient ID ("" for other files or an unreadable header)."""
    if path.suffix.lower() != ".dcm":
        return ""
    from cxr_tuner.data.dicom import dicom_patient_id  # lazy: pydicom only for DICOM data

    try:
        return dicom_patient_id(path) or ""
    except DecodeFailure:
        return ""  # decoding will skip the file and say why


def _from_csv(csv_path: Path) -> list[Example]:
    rows = _read_csv_rows(csv_path)
    base = csv_path.parent.resolve()
    examples, missing = [], []
    for line, row in rows:
        path = _resolve_row_path(csv_path, base, line, row["path"])
        if not path.is_file():
            missing.append(row["path"])
            continue
        raw = row["label"].strip()
        if not raw:
            raise UserError(f"{csv_path} line {line}: empty label; give every row a class name.")
        group = _first_column(row, PATIENT_COLUMNS) or _dicom_patient(path)
        source = _first_column(row, SOURCE_COLUMNS)
        examples.append(Example(str(path), normalise_label(raw), group, raw, source))
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise UserError(
            f"{csv_path}: {len(missing)} listed file(s) do not exist ({shown}); paths are "
            f"relative to {base}: fix the paths or remove those rows."
        )
    _check_duplicates(csv_path, examples)
    return examples


def _first_column(row: dict, names) -> str:
    name = next((n for n in names if n in row), None)
    return (row.get(name) or "").strip() if name else ""


def ignored_columns(root) -> list[str]:
    """The columns of ``root``'s CSV manifest that `discover` does not use ([] for a folder tree).

    Of several patient-id (or source) spellings only the first present is used; the
    others are ignored too.
    """
    root = Path(root).expanduser()
    csv_path = root if root.is_file() else next((root / n for n in CSV_NAMES if (root / n).is_file()), None)
    if csv_path is None:
        return []
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        header = next(csv.reader(handle), [])
    columns = [_column_name(c) for c in header]
    used = {"path", "label"} | {next((n for n in names if n in columns), "")
                                for names in (PATIENT_COLUMNS, SOURCE_COLUMNS)}
    return [original for original, name in zip(header, columns) if name not in used]


def _read_csv_rows(csv_path: Path) -> list[tuple[int, dict]]:
    if csv_path.suffix.lower() != ".csv":
        raise UserError(
            f"Data path {csv_path} is a file but not a .csv manifest: pass the folder that "
            f"holds the images, or a CSV with columns path,label[,patient_id]."
        )
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [_column_name(c) for c in (reader.fieldnames or [])]
            _check_columns(csv_path, columns)
            reader.fieldnames = columns
            return [(i + 2, row) for i, row in enumerate(reader)]
    except (UnicodeDecodeError, csv.Error) as error:
        raise UserError(
            f"{csv_path} is not a readable UTF-8 CSV ({error}); save it as CSV (UTF-8) with "
            "columns path,label[,patient_id]."
        ) from None


def _column_name(header: str) -> str:
    """'Patient ID', 'patient-id' -> 'patient_id', 'PatientID' -> 'patientid': lower case, "_" for gaps."""
    return re.sub(r"[\s\-]+", "_", (header or "").strip().lower())


def _check_columns(csv_path: Path, columns: list[str]) -> None:
    missing = [c for c in ("path", "label") if c not in columns]
    if missing:
        raise UserError(
            f"{csv_path} lacks column(s) {', '.join(missing)}; it has "
            f"{', '.join(columns) or 'no header'}. A manifest needs path,label[,patient_id] "
            "(other columns are ignored): rename the columns."
        )


def _resolve_row_path(csv_path: Path, base: Path, line: int, text: str) -> Path:
    raw = Path((text or "").strip())
    if raw.is_absolute():
        raise UserError(
            f"{csv_path} line {line}: absolute path {raw}; write paths relative to {base}."
        )
    path = (base / raw).resolve()
    if not path.is_relative_to(base):
        raise UserError(
            f"{csv_path} line {line}: {raw} points outside the data folder {base}; keep the "
            "images inside the CSV's folder."
        )
    return path


def _check_duplicates(csv_path: Path, examples: list[Example]) -> None:
    seen, repeated = set(), []
    for example in examples:
        if example.path in seen:
            repeated.append(example.path)
        seen.add(example.path)
    if repeated:
        raise UserError(
            f"{csv_path} lists {len(repeated)} file(s) more than once (e.g. {repeated[0]}); "
            "keep one row per image."
        )
