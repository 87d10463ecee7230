"""Decoded-image cache: every image is decoded and resized once per image size.

Layout, one folder per size: ``<cache_dir>/decoded-<size>/index.json`` maps each image's
absolute path to the (mtime_ns, byte size) it had when decoded and either its slot in
``pixels-<token>.u8`` (a raw uint8 array of ``size*size`` bytes per slot) or the reason it
was skipped. A changed file fails the (mtime_ns, bytes) check and is decoded again.

Crash safety: a new pixel file is written completely and fsync'd under a fresh name
before ``index.json`` is replaced with ``os.replace``; an interrupted write leaves the old
index pointing at the old, intact pixel file. One writer per cache folder at a time.
"""

import errno
import json
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cxr_tuner.data import files, images as image_io
from cxr_tuner.data.errors import DecodeFailure, UserError

# Bump when decode_image's output for the same file changes, so old caches are rebuilt.
_FORMAT = 1
_INDEX_NAME = "index.json"
_STALE_PARTIAL_SECONDS = 3600
_DECODE_CHUNK = 256


@dataclass
class Skipped:
    """An image that could not be used, and why."""

    path: str
    reason: str


@dataclass
class Decoded:
    """Decoded images and what became of every requested example.

    Attributes:
        images: ``(N, size, size, 1)`` uint8, a read-only memmap of the cache file.
        examples: The N examples that decoded, in the requested order.
        skipped: The ones that did not; ``len(examples) + len(skipped)`` is the number found.
    """

    images: np.ndarray
    examples: list
    skipped: list


def load_decoded(examples, size: int, cache_dir, progress: bool = True) -> Decoded:
    """Decode ``examples`` at ``size`` px through the cache; only new or changed files decode.

    Args:
        examples: `data.manifest.Example`s (anything with a ``path``).
        size: Side of the square images.
        cache_dir: Folder for the cache (created if needed).
        progress: Show a progress bar with counts and rate while decoding.

    Raises:
        UserError: The cache folder cannot be written or its disk is full.
    """
    folder = Path(cache_dir) / f"decoded-{size}"
    _make_folder(folder)
    old = _read_index(folder, size)
    stats = [_stat(example.path) for example in examples]
    if _is_current(old, examples, stats):
        return _from_index(folder, size, old, examples)
    new = _rewrite(folder, size, old, examples, stats, progress)
    return _from_index(folder, size, new, examples)


def write_skipped_csv(path, skipped) -> None:
    """Write ``path,reason`` rows for skipped images (the header even when none were)."""
    files.write_csv(path, ["path", "reason"], ([item.path, item.reason] for item in skipped))


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(
            f"Cannot create the image cache folder {folder} ({error.strerror}); "
            "point the cache at a writable folder."
        ) from error


def _stat(path: str):
    try:
        info = os.stat(path)
    except OSError:
        return None
    return [info.st_mtime_ns, info.st_size]


def _read_index(folder: Path, size: int) -> dict:
    """The folder's index, or an empty one if missing, from another format, or inconsistent."""
    empty = {"format": _FORMAT, "size": size, "data_file": None, "slots": 0, "entries": {}}
    try:
        index = json.loads((folder / _INDEX_NAME).read_text(encoding="utf-8"))
        if index["format"] != _FORMAT or index["size"] != size:
            return empty
        if index["slots"]:
            data_bytes = (folder / index["data_file"]).stat().st_size
            if data_bytes != index["slots"] * size * size:
                return empty
    except (OSError, ValueError, KeyError, TypeError):
        return empty
    return index


def _entry_for(index: dict, path: str, stat):
    entry = index["entries"].get(path)
    if stat is None or entry is None or entry["stat"] != stat:
        return None
    return entry


def _is_current(index: dict, examples, stats) -> bool:
    """True if every example is cached unchanged and the used ones fill slots 0..N-1 in order."""
    next_slot = 0
    for example, stat in zip(examples, stats):
        entry = _entry_for(index, example.path, stat)
        if entry is None:
            return False
        if "slot" in entry:
            if entry["slot"] != next_slot:
                return False
            next_slot += 1
    return True


def _from_index(folder: Path, size: int, index: dict, examples) -> Decoded:
    used, skipped = [], []
    for example in examples:
        entry = index["entries"][example.path]
        if "slot" in entry:
            used.append(example)
        else:
            skipped.append(Skipped(example.path, entry["reason"]))
    return Decoded(_open_pixels(folder, size, index)[: len(used)], used, skipped)


def _open_pixels(folder: Path, size: int, index: dict) -> np.ndarray:
    if not index["slots"]:
        return np.zeros((0, size, size, 1), dtype=np.uint8)
    shape = (index["slots"], size, size, 1)
    return np.memmap(folder / index["data_file"], dtype=np.uint8, mode="r", shape=shape)


def _rewrite(folder: Path, size: int, old: dict, examples, stats, progress: bool) -> dict:
    """Write a new pixel file (requested examples first, in order) and swap the index."""
    kept = _still_valid_others(old, {example.path for example in examples})
    _check_free_space(folder, (len(examples) + len(kept)) * size * size)
    old_pixels = _open_pixels(folder, size, old)
    new = {"format": _FORMAT, "size": size, "data_file": f"pixels-{uuid.uuid4().hex}.u8",
           "slots": 0, "entries": {}}
    partial = folder / (new["data_file"] + ".partial")
    misses = sum(_entry_for(old, e.path, s) is None for e, s in zip(examples, stats))
    try:
        with open(partial, "wb") as out, tqdm(
            total=misses, disable=None if progress else True, unit="img", desc=f"Decoding images at {size}px"
        ) as bar:
            for example, entry in zip(examples, _entries(old, examples, stats, size, bar)):
                _add_entry(new, out, example.path, entry, old_pixels)
            for path, entry in kept.items():
                _add_entry(new, out, path, entry, old_pixels)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, folder / new["data_file"])
        _write_index(folder, new)
    except BaseException as error:  # incl. Ctrl-C: leave no half-written pixel file
        partial.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            raise _disk_full(folder, (len(examples) + len(kept)) * size * size) from error
        raise
    _remove_old_files(folder, old, new)
    return new


def _still_valid_others(old: dict, requested: set) -> dict:
    """Entries for images not requested now but still unchanged on disk: keep them."""
    return {
        path: entry for path, entry in old["entries"].items()
        if path not in requested and _entry_for(old, path, _stat(path)) is not None
    }


def _entries(old: dict, examples, stats, size: int, bar):
    """Each example's entry, in order: the old one while valid, else decoded anew.

    Decoding runs on a thread per core (Pillow and NumPy release the GIL while they
    decode and resize), a chunk at a time so that only a chunk's pixels wait in memory.
    """
    examples, stats = list(examples), list(stats)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for start in range(0, len(examples), _DECODE_CHUNK):
            chunk = list(zip(examples[start:start + _DECODE_CHUNK], stats[start:start + _DECODE_CHUNK]))
            kept = [_entry_for(old, example.path, stat) for example, stat in chunk]
            pending = [pool.submit(_decode_entry, example.path, stat, size) if entry is None else None
                       for (example, stat), entry in zip(chunk, kept)]
            for entry, future in zip(kept, pending):
                if future is not None:
                    entry = future.result()
                    bar.update(1)
                yield entry


def _decode_entry(path: str, stat, size: int) -> dict:
    if stat is None:
        return {"stat": None, "reason": "file missing"}
    try:
        return {"stat": stat, "pixels": image_io.decode_image(path, size)}
    except DecodeFailure as failure:
        return {"stat": stat, "reason": str(failure)}


def _add_entry(new: dict, out, path: str, entry: dict, old_pixels: np.ndarray) -> None:
    if "reason" in entry:
        new["entries"][path] = {"stat": entry["stat"], "reason": entry["reason"]}
        return
    pixels = entry["pixels"] if "pixels" in entry else old_pixels[entry["slot"]]
    out.write(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
    new["entries"][path] = {"stat": entry["stat"], "slot": new["slots"]}
    new["slots"] += 1


def _write_index(folder: Path, index: dict) -> None:
    partial = folder / (_INDEX_NAME + ".partial")
    with open(partial, "w", encoding="utf-8") as handle:
        json.dump(index, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, folder / _INDEX_NAME)


def _check_free_space(folder: Path, needed: int) -> None:
    if shutil.disk_usage(folder).free < needed:
        raise _disk_full(folder, needed)


def _disk_full(folder: Path, needed: int) -> UserError:
    return UserError(
        f"Not enough disk space for the decoded-image cache in {folder}: it needs about "
        f"{max(needed / 1e6, 0.1):,.1f} MB; free some space or point the cache at a bigger disk."
    )


def _remove_old_files(folder: Path, old: dict, new: dict) -> None:
    """Delete the replaced pixel file and partial files a crash left behind long ago."""
    stale = [folder / old["data_file"]] if old["data_file"] else []
    cutoff = time.time() - _STALE_PARTIAL_SECONDS
    stale += [p for p in folder.glob("*.partial") if p.stat().st_mtime < cutoff]
    for path in stale:
        if path.name != new["data_file"]:
            try:
                path.unlink(missing_ok=True)  # an open memmap of it stays valid on POSIX
            except OSError:
                pass  # e.g. still mapped on Windows: harmless, retried next rewrite
