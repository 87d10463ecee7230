"""Files written whole or not at all, read back with one clear line when damaged, and their digests."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path

from cxr_tuner.data.errors import UserError


def sha256_file(path) -> str:
    """Hex sha256 of a file's bytes."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


@contextlib.contextmanager
def replaced(path, mode: str = "w", newline: str | None = None):
    """Opens a temporary file beside ``path``; on success it replaces ``path`` whole.

    A kill, a full disk or an exception before the end leaves ``path`` as it was
    (the old content, or no file) and removes the temporary file. The folder
    must exist.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        kwargs = {} if "b" in mode else {"encoding": "utf-8", "newline": newline}
        with os.fdopen(handle, mode, **kwargs) as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_text(path, text: str) -> None:
    """Writes ``text`` to ``path`` whole (see `replaced`)."""
    with replaced(path) as out:
        out.write(text)


def write_json(path, content) -> None:
    """Writes ``content`` as indented JSON to ``path`` whole."""
    write_text(path, json.dumps(content, indent=2) + "\n")


def write_npz(path, **arrays) -> None:
    """Writes NumPy arrays as an ``.npz`` file to ``path`` whole."""
    import numpy as np  # here: importing NumPy adds warning filters, and importing cli must add none
    with replaced(path, "wb") as out:
        np.savez(out, **arrays)


def write_csv(path, header, rows) -> None:
    """Writes a CSV with ``header`` and ``rows`` to ``path`` whole."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    with replaced(path, newline="") as out:
        out.write(buffer.getvalue())


def read_json(path, remedy: str):
    """Parses a JSON file this project wrote.

    Raises:
        UserError: If it is missing or damaged, naming the file and ``remedy``
            (what to run to get a whole one).
    """
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} is missing; {remedy}.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is damaged ({type(error).__name__}: {error}); {remedy}.") from None
