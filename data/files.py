"""Files written whole or not at all, read back with one clear line when damaged, and their digests."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import secrets
from pathlib import Path

from cxr_tuner.data.errors import UserError


def sha256_file(path) -> str:
    """Hex sha256 of a file's bytes."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _temporary_beside(path: Path) -> tuple[int, Path]:
    """A new empty file beside ``path`` (open descriptor, path) with the mode the umask gives any new file.

    ``tempfile.mkstemp`` would make it 0600 whatever the umask, and the rename keeps that
    mode: a TensorBoard server or a colleague could not read the run directory.
    """
    while True:
        temporary = path.parent / f".{path.name}.{secrets.token_hex(6)}.part"
        try:
            return os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666), temporary
        except FileExistsError:
            continue


@contextlib.contextmanager
def replaced(path, mode: str = "w", newline: str | None = None):
    """Opens a temporary file beside ``path``; on success it replaces ``path`` whole.

    A kill, a full disk or an exception before the end leaves ``path`` as it was
    (the old content, or no file) and removes the temporary file. The folder
    must exist. The file gets the mode the umask gives (0644 under umask 022).
    """
    path = Path(path)
    handle, temporary = _temporary_beside(path)
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


def linked(path, text: str) -> bool:
    """Creates ``path`` holding ``text``, only if it does not exist; whether it did.

    The text is written to a temporary file first and hard-linked into place, so
    ``path`` never exists half-written (what a lock needs: a reader never sees it empty).
    """
    path = Path(path)
    handle, temporary = _temporary_beside(path)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.link(temporary, path)
        return True
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


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
