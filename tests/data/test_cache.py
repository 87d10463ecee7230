"""The decoded-image cache: decode once, reread after, redo only what changed."""

import errno
import os

import numpy as np
import pytest
from PIL import Image

from cxr_tuner.data import cache, images
from cxr_tuner.data.errors import UserError
from cxr_tuner.data.manifest import Example


@pytest.fixture
def examples(tmp_path):
    """Three good images (different grey levels) and three bad files."""
    root = tmp_path / "data"
    root.mkdir()
    for level in (40, 120, 200):
        Image.new("L", (30, 20), level).save(root / f"good{level}.png")
    (root / "empty.png").write_bytes(b"")
    (root / "text.jpg").write_text("not a picture")
    Image.new("L", (64, 64), 9).save(root / "full.png")
    data = (root / "full.png").read_bytes()
    (root / "cut.png").write_bytes(data[: len(data) // 2])
    (root / "full.png").unlink()
    return [Example(str(p), "Normal") for p in sorted(root.iterdir())]


@pytest.fixture
def decode_calls(monkeypatch):
    calls = []
    real = images.decode_image

    def counting(path, size):
        calls.append(path)
        return real(path, size)

    monkeypatch.setattr(images, "decode_image", counting)
    return calls


def test_bad_files_are_skipped_with_reasons_and_counts_reconcile(tmp_path, examples):
    decoded = cache.load_decoded(examples, 16, tmp_path / "cache", progress=False)
    reasons = {os.path.basename(s.path): s.reason for s in decoded.skipped}
    assert reasons == {
        "cut.png": "truncated image", "empty.png": "zero-byte file", "text.jpg": "not an image",
    }
    assert len(decoded.examples) + len(decoded.skipped) == len(examples)
    assert decoded.images.shape == (3, 16, 16, 1) and decoded.images.dtype == np.uint8
    # Images line up with their examples.
    assert [int(im.mean()) for im in decoded.images] == [120, 200, 40]
    names = [os.path.basename(e.path) for e in decoded.examples]
    assert names == ["good120.png", "good200.png", "good40.png"]


def test_second_call_reads_the_cache_without_decoding(tmp_path, examples, decode_calls):
    first = cache.load_decoded(examples, 16, tmp_path / "cache", progress=False)
    assert len(decode_calls) == len(examples)
    second = cache.load_decoded(examples, 16, tmp_path / "cache", progress=False)
    assert len(decode_calls) == len(examples)  # skipped files are remembered too
    assert np.array_equal(first.images, second.images)
    assert second.skipped == first.skipped and second.examples == first.examples
    assert not second.images.flags.writeable


def test_changed_file_and_new_size_invalidate(tmp_path, examples, decode_calls):
    cache.load_decoded(examples, 16, tmp_path / "cache", progress=False)
    changed = examples[-1].path  # good40.png
    Image.new("L", (30, 20), 77).save(changed)
    stat = os.stat(changed)
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    decode_calls.clear()
    decoded = cache.load_decoded(examples, 16, tmp_path / "cache", progress=False)
    assert decode_calls == [changed]
    assert int(decoded.images[-1].mean()) == 77
    decode_calls.clear()
    cache.load_decoded(examples, 12, tmp_path / "cache", progress=False)
    assert len(decode_calls) == len(examples)


def test_subset_then_full_set_decodes_only_the_new_ones(tmp_path, examples, decode_calls):
    cache.load_decoded(examples[:2], 16, tmp_path / "cache", progress=False)
    decoded = cache.load_decoded(examples, 16, tmp_path / "cache", progress=False)
    assert len(decode_calls) == len(examples)
    again = cache.load_decoded(examples[2:], 16, tmp_path / "cache", progress=False)
    assert len(decode_calls) == len(examples)
    assert np.array_equal(again.images, decoded.images)  # examples[:2] were the bad ones


def test_crash_mid_write_leaves_the_old_cache_valid(tmp_path, examples, monkeypatch, decode_calls):
    good = [e for e in examples if "good" in e.path]
    cache.load_decoded(good[:2], 16, tmp_path / "cache", progress=False)

    def crash(path, size):
        raise KeyboardInterrupt  # the user hits Ctrl-C while the new file is written

    monkeypatch.setattr(images, "decode_image", crash)
    with pytest.raises(KeyboardInterrupt):
        cache.load_decoded(good, 16, tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache" / "decoded-16").glob("*.partial"))
    monkeypatch.setattr(images, "decode_image", crash)  # a hit must not decode at all
    decoded = cache.load_decoded(good[:2], 16, tmp_path / "cache", progress=False)
    assert [int(im.mean()) for im in decoded.images] == [120, 200]


def test_disk_full_is_a_user_error_naming_the_folder(tmp_path, examples, monkeypatch):
    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache.os, "fsync", full_disk)
    with pytest.raises(UserError, match=r"decoded-16.*MB"):
        cache.load_decoded(examples, 16, tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache" / "decoded-16").glob("*.partial"))


def test_write_skipped_csv_always_has_a_header(tmp_path):
    cache.write_skipped_csv(tmp_path / "none.csv", [])
    assert (tmp_path / "none.csv").read_text().splitlines() == ["path,reason"]
    cache.write_skipped_csv(tmp_path / "one.csv", [cache.Skipped("/x/a,b.png", "not an image")])
    assert (tmp_path / "one.csv").read_text().splitlines()[1] == '"/x/a,b.png",not an image'
