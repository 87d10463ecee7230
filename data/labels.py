"""Read a label file into one table: single-label (multiclass) or multi-label films.

A multi-label film is an `Example` whose ``label`` string names its positive labels,
sorted and joined by "|", then its masked labels as "?Name" (uncertain under
U-Ignore); negatives are omitted, "" is a film with no positive. `multi_hot` turns
those strings into the (films, labels) target matrix.

Multi-label layouts: NIH ChestX-ray14's ``Data_Entry_2017.csv``, the CheXpert / MIMIC
observation columns, and a generic multi-hot CSV ``path,FindingA,FindingB,...``.
Single-label layouts (folder per class, ``path,label`` CSV) are read by
`manifest.discover`, unchanged.
"""

import csv
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxr_tuner.data import manifest
from cxr_tuner.data.errors import UserError
from cxr_tuner.data.manifest import Example, normalise_label

MASKED = -1.0
TASKS = ("auto", "multiclass", "multilabel")
UNCERTAIN_POLICIES = ("ones", "zeros", "ignore")
NIH_FILE = "Data_Entry_2017.csv"
CHEXPERT_FILE = "train.csv"
# A folder's label file: the first of these present is used.
LABEL_FILES = (*manifest.CSV_NAMES, NIH_FILE, CHEXPERT_FILE)
CHEXPERT_OBSERVATIONS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)
_CHEXPERT_COLUMNS = {manifest._column_name(name): name for name in CHEXPERT_OBSERVATIONS}
# View columns: CheXpert's two (joined as "Frontal/PA"), MIMIC's and NIH's one.
_VIEW_COLUMNS = ("frontal/lateral", "ap/pa", "viewposition", "view_position")
# Other CheXpert / MIMIC columns that do not make a file a generic multi-hot one.
_CHEXPERT_OTHER = {"sex", "age", "study_id", "dicom_id", "split", "studydate", "studytime", "rows", "columns"}
_NIH_COLUMNS = ("image_index", "finding_labels")
_CHEXPERT_VALUES = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "": 0.0, "-1": None, "-1.0": None}
_MULTI_HOT_VALUES = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0}
_POLICY_VALUE = {"ones": 1.0, "zeros": 0.0, "ignore": None}
_POLICY_NAME = {"ones": "U-Ones: read as positive", "zeros": "U-Zeros: read as negative",
                "ignore": "U-Ignore: masked, left out of the loss"}
_CHEXPERT_PATIENT = re.compile(r"^patient\d+$", re.IGNORECASE)
_SHOWN = 5  # how many missing paths or bad labels an error lists


@dataclass(frozen=True)
class Table:
    """What a label file holds, and what reading it decided.

    Attributes:
        task: "multiclass" or "multilabel".
        examples: The films, sorted by path; a multi-label film's ``label`` as `encode` writes it.
        names: The label names in the file's column order (NIH: sorted); for multiclass
            the sorted class names.
        layout: "folders", "csv", "nih", "chexpert" or "multi-hot".
        lines: One line per decision: the auto task, the uncertain policy's counts, the views kept.
    """

    task: str
    examples: list
    names: tuple
    layout: str
    lines: list = field(default_factory=list)


def encode(values: dict) -> str:
    """A film's label string from ``{name: 1 | 0 | None}`` (None: masked).

    Positives sorted, then masked ones as "?Name" sorted; negatives are left out.
    """
    positive, masked = [], []
    for name, value in values.items():
        if value is None:
            masked.append(f"?{name}")
        elif value == 1:
            positive.append(name)
        elif value != 0:
            raise ValueError(f"label {name}: value {value!r} is not 1, 0 or None")
    return "|".join(sorted(positive) + sorted(masked))


def decode(label: str) -> dict:
    """``{name: 1.0 | None}`` of a label string (the inverse of `encode`, negatives absent)."""
    parts = (part for part in label.split("|") if part)
    return {part.removeprefix("?"): None if part.startswith("?") else 1.0 for part in parts}


def multi_hot(label_strings, names) -> np.ndarray:
    """(films, labels) float32 targets: 1 positive, 0 negative, MASKED masked.

    Labels not in ``names`` are ignored (a dropped label disappears this way).
    """
    column = {name: index for index, name in enumerate(names)}
    targets = np.zeros((len(label_strings), len(column)), dtype=np.float32)
    for row, label in enumerate(label_strings):
        for name, value in decode(label).items():
            if name in column:
                targets[row, column[name]] = MASKED if value is None else 1.0
    return targets


def read(root, task: str = "auto", uncertain: str = "ones", views=None) -> Table:
    """Read ``root``'s label file (or folder-per-class tree) into a `Table`.

    Args:
        root: A folder (its first of metadata.csv, manifest.csv, Data_Entry_2017.csv,
            train.csv is used, else it is a folder-per-class tree) or a CSV file.
        task: "auto" decides from the file and says why in one line; "multiclass" or
            "multilabel" refuse a file of the other kind.
        uncertain: CheXpert's -1.0: "ones" -> positive, "zeros" -> negative,
            "ignore" -> masked.
        views: None, or view names (e.g. ["PA", "AP"]): keep only the films whose view
            (either part of "Frontal/PA") is one of them, case-insensitively.

    Raises:
        UserError: One line naming the problem (missing column, bad value, missing or
            repeated files, no labels, a task or views the file does not fit).
    """
    if task not in TASKS:
        raise UserError(f"--task {task} is not one of {', '.join(TASKS)}: pick one of those.")
    if uncertain not in UNCERTAIN_POLICIES:
        raise UserError(f"--uncertain {uncertain} is not one of {', '.join(UNCERTAIN_POLICIES)}: pick one of those.")
    wanted = _views_wanted(views)
    path = Path(root).expanduser()
    if not path.exists():
        raise UserError(f"Data path {path} does not exist: pass a folder of images or a CSV.")
    csv_path = path if path.is_file() else next((path / n for n in LABEL_FILES if (path / n).is_file()), None)
    if csv_path is None or csv_path.suffix.lower() != ".csv":
        return _multiclass(root, "folders" if csv_path is None else "csv", task, wanted,
                           f"{path} is a folder per class" if csv_path is None else f"{path.name} is a single-label file")
    header = _read_header(csv_path)
    layout, why = _layout(csv_path, header)
    if layout == "csv":  # the file itself: a train.csv with a label column is not looked up by discover
        return _multiclass(csv_path, layout, task, wanted, why)
    if task == "multiclass":
        raise UserError(f"{csv_path} is a multi-label file ({why}): use --task multilabel or --task auto.")
    reader = {"nih": _read_nih, "chexpert": _read_chexpert, "multi-hot": _read_multi_hot}[layout]
    examples, names, has_views, lines = reader(csv_path, header, uncertain)
    _check_no_duplicates(csv_path, examples)
    _check_some_positive(csv_path, examples, names)
    if wanted:
        examples, view_line = _filter_views(csv_path, examples, wanted, has_views)
        lines.append(view_line)
    if task == "auto":
        lines.insert(0, f"task: multilabel ({why}; {len(names)} labels)")
    return Table("multilabel", sorted(examples, key=lambda e: e.path), tuple(names), layout, lines)


def _multiclass(root, layout: str, task: str, wanted, why: str) -> Table:
    if task == "multilabel":
        raise UserError(f"{root} holds single-label data ({why}): use --task multiclass or --task auto.")
    if wanted:
        raise UserError(f"--views {','.join(wanted)}: {root} has no view column (single-label data); "
                        "drop --views, or give a CSV with a Frontal/Lateral, AP/PA or ViewPosition column.")
    examples = manifest.discover(root)
    names = tuple(manifest.class_names(examples))
    lines = [f"task: multiclass ({why}; {len(names)} classes)"] if task == "auto" else []
    return Table("multiclass", examples, names, layout, lines)


def _views_wanted(views) -> list[str]:
    if views is None:
        return []
    if isinstance(views, str):
        views = views.split(",")
    wanted = [v.strip() for v in views if v and v.strip()]
    if not wanted:
        raise UserError("--views is empty: name the views to keep, e.g. --views PA,AP, or drop it.")
    return wanted


def _read_header(csv_path: Path) -> list[str]:
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            return [manifest._column_name(c) for c in next(csv.reader(handle), [])]
    except (UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"{csv_path} is not a readable UTF-8 CSV ({error}); save it as CSV (UTF-8).") from None


def _rows(csv_path: Path):
    """(line number, cells) per data row; cells padded to the header's width."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            width = len(next(reader, []))
            for index, cells in enumerate(reader):
                if not any(cell.strip() for cell in cells):
                    continue  # a blank line
                if len(cells) < width:
                    cells += [""] * (width - len(cells))
                yield index + 2, cells
    except (UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"{csv_path} is not a readable UTF-8 CSV ({error}); save it as CSV (UTF-8).") from None


def _layout(csv_path: Path, header: list[str]) -> tuple[str, str]:
    """(layout, why) from the header alone."""
    name = csv_path.name
    if "label" in header:
        return "csv", f"{name} has a label column"
    if "finding_labels" in header or "image_index" in header:
        return "nih", f"{name} has NIH's 'Finding Labels' column"
    if "path" not in header:
        raise UserError(
            f"{csv_path} has no path column (it has {', '.join(header) or 'no header'}): a label file needs "
            "path,label (single-label), Image Index,Finding Labels (NIH), Path plus CheXpert's observation "
            "columns, or path plus one 0/1 column per label; rename the columns.")
    chexpert = [c for c in header if c in _CHEXPERT_COLUMNS]
    if chexpert and not _unknown_columns(header):
        return "chexpert", f"{name} has CheXpert's observation columns"
    return "multi-hot", f"{name} has a path column and one 0/1 column per label, no label column"


def _unknown_columns(header: list[str]) -> list[str]:
    """Columns that are neither a CheXpert observation nor a path, patient, source, view or other CheXpert/MIMIC column."""
    known = {"path", *manifest.PATIENT_COLUMNS, *manifest.SOURCE_COLUMNS, *_VIEW_COLUMNS, *_CHEXPERT_OTHER,
             *_CHEXPERT_COLUMNS}
    return [c for c in header if c not in known]


def _column(header: list[str], names) -> int | None:
    return next((header.index(n) for n in names if n in header), None)


def _read_nih(csv_path: Path, header: list[str], uncertain: str):
    missing = [c for c in (*_NIH_COLUMNS, "patient_id") if c not in header]
    if missing:
        raise UserError(
            f"{csv_path} lacks NIH column(s) {', '.join(missing)}; it has {', '.join(header)}. "
            "NIH's Data_Entry_2017.csv needs Image Index, Finding Labels and Patient ID: rename the columns.")
    image, findings, patient = (header.index(c) for c in (*_NIH_COLUMNS, "patient_id"))
    view = _column(header, ("view_position",))
    found, twice = _index_images(csv_path.parent)
    examples, missing_names, repeated = [], [], {}
    for line, cells in _rows(csv_path):
        name = cells[image].strip()
        if name in twice:
            repeated.setdefault(name, twice[name])
        path = found.get(name)
        if path is None:
            missing_names.append(name)
            continue
        raw = cells[findings].strip()
        labels = [normalise_label(part) for part in raw.split("|") if part.strip()]
        if not labels:
            raise UserError(f"{csv_path} line {line}, column Finding Labels: empty; write 'No Finding' for a "
                            "film without findings, or remove the row.")
        source = cells[view].strip() if view is not None else ""
        examples.append(Example(path, encode(dict.fromkeys(labels, 1.0)), cells[patient].strip(), raw, source))
    if repeated:
        name, paths = next(iter(repeated.items()))
        raise UserError(
            f"{csv_path}: {len(repeated)} listed image name(s) are found twice under {csv_path.parent} (e.g. {name}: "
            f"{paths[0]} and {paths[1]}); keep one copy of each image.")
    _check_missing(csv_path, missing_names, f"image names are looked up anywhere under {csv_path.parent}")
    names = sorted({name for e in examples for name in decode(e.label)})
    return examples, names, view is not None, []


def _index_images(folder: Path) -> tuple[dict, dict]:
    """({file name: absolute path}, {file name: [two paths]} for names found twice), one walk of ``folder``."""
    found, twice, stack = {}, {}, [str(folder.resolve())]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    if entry.name.lower() not in ("masks", "__macosx"):
                        stack.append(entry.path)
                elif entry.name.lower().endswith(manifest.IMAGE_EXTENSIONS):
                    if entry.name in found:
                        twice.setdefault(entry.name, sorted([found[entry.name], entry.path]))
                    else:
                        found[entry.name] = entry.path
    return found, twice


def _read_chexpert(csv_path: Path, header: list[str], uncertain: str):
    path_column = header.index("path")
    labels = [(i, c) for i, c in enumerate(header) if c in _CHEXPERT_COLUMNS]
    names = [normalise_label(_CHEXPERT_COLUMNS[c]) for _, c in labels]
    patient = _column(header, manifest.PATIENT_COLUMNS)
    frontal, ap_pa, position = (_column(header, (c,)) for c in ("frontal/lateral", "ap/pa", "viewposition"))
    base, parent = csv_path.parent.resolve(), csv_path.parent.resolve().parent
    examples, missing, uncertain_counts = [], [], Counter()
    policy = _POLICY_VALUE[uncertain]
    for line, cells in _rows(csv_path):
        path = _resolve(csv_path, line, cells[path_column], (base, parent))
        if path is None:
            missing.append(cells[path_column].strip())
            continue
        values = {}
        for (index, column), name in zip(labels, names):
            text = cells[index].strip()
            if text not in _CHEXPERT_VALUES:
                raise UserError(f"{csv_path} line {line}, column {_CHEXPERT_COLUMNS[column]}: value '{text}' is not "
                                "one of 1.0, 0.0, -1.0 (uncertain) or blank (not mentioned); fix the value.")
            value = _CHEXPERT_VALUES[text]
            if value is None:
                uncertain_counts[name] += 1
                value = policy
            values[name] = value
        group = (cells[patient].strip() if patient is not None else "") or _chexpert_patient(path)
        view = "/".join(cells[i].strip() for i in (frontal, ap_pa, position) if i is not None and cells[i].strip())
        source = view if any(i is not None for i in (frontal, ap_pa, position)) else _source(header, cells)
        examples.append(Example(str(path), encode(values), group, "", source))
    _check_missing(csv_path, missing, f"paths are relative to {base}, or else to {parent}")
    lines = []
    if uncertain_counts:
        counts = ", ".join(f"{name} {uncertain_counts[name]}" for name in names if uncertain_counts[name])
        lines.append(f"uncertain: {sum(uncertain_counts.values())} uncertain (-1.0) value(s) "
                     f"{_POLICY_NAME[uncertain]} (--uncertain {uncertain}): {counts}")
    ignored = [c for c in header if c in _CHEXPERT_OTHER]
    if ignored:
        lines.append(f"columns not used: {', '.join(ignored)}")
    return examples, names, any(i is not None for i in (frontal, ap_pa, position)), lines


def _chexpert_patient(path: Path) -> str:
    folder = next((part for part in reversed(path.parts[:-1]) if _CHEXPERT_PATIENT.match(part)), "")
    return folder or manifest._dicom_patient(path)


def _source(header: list[str], cells: list[str]) -> str:
    index = _column(header, manifest.SOURCE_COLUMNS)
    return cells[index].strip() if index is not None else ""


def _read_multi_hot(csv_path: Path, header: list[str], uncertain: str):
    path_column = header.index("path")
    not_labels = {"path", *manifest.PATIENT_COLUMNS, *manifest.SOURCE_COLUMNS, *_VIEW_COLUMNS}
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        original = next(csv.reader(handle))
    labels = [(i, original[i].strip()) for i, c in enumerate(header) if c not in not_labels]
    if not labels:
        raise UserError(f"{csv_path} has no label column (it has {', '.join(original)}): give a label column "
                        "(single-label) or one 0/1 column per finding (multi-label).")
    names = [normalise_label(raw) for _, raw in labels]
    repeated = sorted(name for name, n in Counter(names).items() if n > 1)
    if repeated:
        raise UserError(f"{csv_path}: columns {', '.join(raw for _, raw in labels if normalise_label(raw) in repeated)} "
                        "name the same label; keep one column per label.")
    hint = _chexpert_hint(header)
    patient = _column(header, manifest.PATIENT_COLUMNS)
    view = _column(header, _VIEW_COLUMNS)
    base = csv_path.parent.resolve()
    examples, missing = [], []
    for line, cells in _rows(csv_path):
        path = _resolve(csv_path, line, cells[path_column], (base,))
        if path is None:
            missing.append(cells[path_column].strip())
            continue
        values = {}
        for (index, raw), name in zip(labels, names):
            text = cells[index].strip()
            if text not in _MULTI_HOT_VALUES:
                raise UserError(f"{csv_path} line {line}, column {raw}: value '{text}' is not one of 0, 1 "
                                f"(0.0, 1.0); fix the value{hint}.")
            values[name] = _MULTI_HOT_VALUES[text]
        group = (cells[patient].strip() if patient is not None else "") or manifest._dicom_patient(path)
        source = cells[view].strip() if view is not None else _source(header, cells)
        examples.append(Example(str(path), encode(values), group, "", source))
    _check_missing(csv_path, missing, f"paths are relative to {base}")
    return examples, names, view is not None, []


def _chexpert_hint(header: list[str]) -> str:
    """Why a file with CheXpert columns was read as a generic multi-hot one, for a bad-value message."""
    if not any(c in _CHEXPERT_COLUMNS for c in header):
        return ""
    return (f" (read as a generic multi-hot CSV because of its column(s) {', '.join(_unknown_columns(header))}; "
            "without them it is read as CheXpert's, which allows -1.0 and blank)")


def _resolve(csv_path: Path, line: int, text: str, bases) -> Path | None:
    """The row's file, relative to the first base where it exists; None when it exists under none."""
    raw = Path((text or "").strip())
    if raw.is_absolute():
        raise UserError(f"{csv_path} line {line}: absolute path {raw}; write paths relative to {bases[0]}.")
    inside = False
    for base in bases:
        path = (base / raw).resolve()
        if path.is_relative_to(base):
            inside = True
            if path.is_file():
                return path
    if not inside:
        raise UserError(f"{csv_path} line {line}: {raw} points outside the data folder {bases[-1]}; keep the "
                        "images inside the CSV's folder.")
    return None


def _check_missing(csv_path: Path, missing: list[str], where: str) -> None:
    if missing:
        shown = ", ".join(missing[:_SHOWN]) + (" ..." if len(missing) > _SHOWN else "")
        raise UserError(f"{csv_path}: {len(missing)} listed file(s) do not exist ({shown}); {where}: fix the "
                        "paths or remove those rows.")


def _check_no_duplicates(csv_path: Path, examples: list[Example]) -> None:
    counts = Counter(e.path for e in examples)
    repeated = [path for path, n in counts.items() if n > 1]
    if repeated:
        raise UserError(f"{csv_path} lists {len(repeated)} file(s) more than once (e.g. {repeated[0]}); "
                        "keep one row per image.")


def _check_some_positive(csv_path: Path, examples: list[Example], names) -> None:
    if not any(name for e in examples for name, value in decode(e.label).items() if value == 1.0):
        raise UserError(f"{csv_path}: no film has a positive label (of {', '.join(names)}); a multi-label file "
                        "needs some 1 values.")


def _filter_views(csv_path: Path, examples: list[Example], wanted: list[str], has_views: bool):
    shown = ",".join(wanted)
    if not has_views:
        raise UserError(f"--views {shown}: {csv_path} has no view column (Frontal/Lateral, AP/PA, ViewPosition "
                        "or NIH's View Position); drop --views or add the column.")
    lower = {v.lower() for v in wanted}
    keep = [bool(lower & {part.strip().lower() for part in e.source.split("/")}) for e in examples]
    kept = [e for e, k in zip(examples, keep) if k]
    if not kept:
        views = ", ".join(sorted({e.source or "(blank)" for e in examples}))
        raise UserError(f"--views {shown} keeps none of the {len(examples)} films of {csv_path}; its views are "
                        f"{views}: name some of those.")
    dropped = Counter(e.source or "(blank)" for e, k in zip(examples, keep) if not k)
    detail = ", ".join(f"{view} {n}" for view, n in sorted(dropped.items()))
    return kept, (f"views {shown}: kept {len(kept)} of {len(examples)} films"
                  + (f", filtered out {len(examples) - len(kept)} ({detail})" if dropped else ""))
