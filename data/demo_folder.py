"""A demo data folder of either kind (3-class or multi-label): what it holds, its stamp, starting it over.

The stamp (``synthetic.json``) records the parameters it was drawn with: the same ones
reuse the folder, others rewrite it, and a folder that holds no stamp is never touched.
"""

import json
import shutil
from pathlib import Path

from cxr_tuner.data.errors import UserError

CLASS_NAMES = ("COVID", "Normal", "Viral_Pneumonia")
"""The 3-class demo's classes, each a folder of its images."""
# Bump when the pictures change, so old demo folders are rewritten, not reused.
GENERATOR_VERSION = 3
STAMP_NAME = "synthetic.json"
MASKS_NAME = "lesion_masks.npz"
METADATA_NAME = "metadata.csv"
LABELS_NAME = "labels.csv"  # the multi-label demo's label file
FILMS_FOLDER = "images"  # the multi-label demo's films


def read_stamp(root: Path) -> dict | None:
    """The parameters of the demo dataset in root, or None when root holds none."""
    try:
        return json.loads((root / STAMP_NAME).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_stamp(root: Path, stamp: dict) -> None:
    (root / STAMP_NAME).write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")


def clear_for_rewrite(root: Path, previous: dict | None) -> None:
    """Empties an earlier demo dataset so no stale image survives; refuses foreign folders."""
    if previous is None:
        if root.exists() and any(root.iterdir()):
            raise UserError(
                f"{root} is not empty and holds no demo dataset; "
                "give an empty or new folder for the synthetic demo data"
            )
        root.mkdir(parents=True, exist_ok=True)
        return
    for folder in (*CLASS_NAMES, FILMS_FOLDER):  # either kind of demo dataset
        shutil.rmtree(root / folder, ignore_errors=True)
    for name in (METADATA_NAME, MASKS_NAME, LABELS_NAME):
        (root / name).unlink(missing_ok=True)
