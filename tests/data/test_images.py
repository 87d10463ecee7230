"""Decoding every common PNG/JPEG flavour to the search's square grayscale uint8."""

import sys
import types

import numpy as np
import pytest
from PIL import Image

from cxr_tuner.data.errors import DecodeFailure
from cxr_tuner.data.images import decode_image


def _save(tmp_path, name, image):
    path = tmp_path / name
    image.save(path)
    return path


@pytest.mark.parametrize(
    "name, image",
    [
        ("gray.png", Image.new("L", (50, 30), 90)),
        ("rgb.jpg", Image.new("RGB", (400, 300), (90, 120, 30))),
        ("rgba.png", Image.new("RGBA", (31, 47), (90, 90, 90, 255))),
        ("palette.png", Image.new("L", (20, 20), 90).convert("P")),
        ("cmyk.jpg", Image.new("CMYK", (40, 30), (10, 20, 30, 40))),
        ("bilevel.png", Image.new("1", (16, 16), 1)),
    ],
)
def test_common_modes_decode_to_square_uint8(tmp_path, name, image):
    pixels = decode_image(_save(tmp_path, name, image), 24)
    assert pixels.shape == (24, 24) and pixels.dtype == np.uint8
    assert pixels.std() < 2  # a flat picture stays flat: no channel garbage


def test_gray_level_survives_rgba_and_palette(tmp_path):
    for name, image in [
        ("rgba.png", Image.new("RGBA", (8, 8), (90, 90, 90, 255))),
        ("palette.png", Image.new("L", (8, 8), 90).convert("P")),
    ]:
        assert decode_image(_save(tmp_path, name, image), 8).mean() == pytest.approx(90, abs=1)


def test_16_bit_png_uses_its_own_range(tmp_path):
    # 12-bit data in a 16-bit PNG, as scanners write it: a blind >> 8 would give 0..15.
    ramp = np.tile(np.linspace(0, 4095, 64), (64, 1)).astype(np.uint16)
    path = _save(tmp_path, "deep.png", Image.fromarray(ramp))
    assert Image.open(path).mode.startswith("I")
    pixels = decode_image(path, 32)
    assert pixels.dtype == np.uint8 and pixels.shape == (32, 32)
    assert pixels.min() <= 5 and pixels.max() >= 250


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("empty.png", b"", "zero-byte file"),
        ("text.png", b"this is not a picture", "not an image"),
    ],
)
def test_bad_files_fail_with_a_reason(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DecodeFailure, match=reason):
        decode_image(path, 16)


@pytest.mark.parametrize("name", ["cut.png", "cut.jpg"])
def test_truncated_files_fail(tmp_path, name):
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 255, (64, 64), np.uint8))
    full = _save(tmp_path, "full" + name[-4:], noise)
    data = full.read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(DecodeFailure, match="truncated"):
        decode_image(tmp_path / name, 16)


def test_decompression_bomb_is_a_failure(tmp_path, monkeypatch):
    path = _save(tmp_path, "big.png", Image.new("L", (40, 40)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # between 1x and 2x: Pillow only warns
    with pytest.raises(DecodeFailure, match="decompression bomb"):
        decode_image(path, 16)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # over 2x: Pillow raises
    with pytest.raises(DecodeFailure, match="decompression bomb"):
        decode_image(path, 16)


def test_dicom_goes_to_the_dicom_reader(tmp_path, monkeypatch):
    path = tmp_path / "scan.DCM"
    path.write_bytes(b"DICM")
    fake = types.ModuleType("cxr_tuner.data.dicom")
    fake.read_dicom = lambda p: (np.full((100, 80), 200, np.uint8), "patient7")
    monkeypatch.setitem(sys.modules, "cxr_tuner.data.dicom", fake)
    pixels = decode_image(path, 20)
    assert pixels.shape == (20, 20) and pixels.dtype == np.uint8 and pixels.mean() == 200
