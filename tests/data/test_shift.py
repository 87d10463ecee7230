"""The acquisition-shift families: deterministic, and each does what its name says."""

import io

import numpy as np
import pytest
from PIL import Image

from cxr_tuner.data import shift


def _films(count=6, side=48, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side] / side
    chest = 60 + 120 * np.exp(-((xx - 0.5) ** 2 + (yy - 0.5) ** 2) * 6)
    films = chest[None] + rng.normal(0, 20, (count, side, side))
    return np.clip(films, 0, 255).astype(np.uint8)[..., None]


@pytest.mark.parametrize("family", shift.FAMILIES)
def test_a_family_is_deterministic_and_does_not_depend_on_the_batch(family):
    films = _films()
    whole = shift.render(films, family, seed=3)
    assert whole.shape == films.shape and whole.dtype == np.uint8
    np.testing.assert_array_equal(whole, shift.render(films, family, seed=3))
    np.testing.assert_array_equal(whole[2:4], shift.render(films[2:4], family, seed=3, ids=[2, 3]))
    assert not np.array_equal(whole, films), f"{family} left every film as it was"
    assert not np.array_equal(whole, shift.render(films, family, seed=4)) or family == "bit_depth"


def test_the_jpeg_family_is_a_jpeg_round_trip():
    films = _films(count=3)
    rendered = shift.render(films, "jpeg", seed=1)
    for film, out in zip(films[..., 0], rendered[..., 0]):
        trips = []
        for quality in range(15, 61):
            buffer = io.BytesIO()
            Image.fromarray(film).save(buffer, format="JPEG", quality=quality)
            trips.append(np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L")))
        assert any(np.array_equal(out, trip) for trip in trips)


def test_markers_write_only_in_the_corners_outside_the_central_field():
    films = _films(count=8, side=64)
    rendered = shift.render(films, "markers", seed=5)
    changed = (rendered != films)[..., 0]
    band = int(64 * shift.MARKER_BAND)
    assert changed.any(axis=(1, 2)).all(), "every film gets a marker"
    inside = np.zeros((64, 64), bool)
    inside[band:-band, :] = True
    inside[:, band:-band] = True  # the central cross: neither a corner's rows nor its columns
    assert not changed[:, inside].any()
    assert (rendered > films)[..., 0][changed].mean() > 0.9, "markers are burned in bright"


def test_borders_are_constant_bands_at_the_edges():
    films = _films(count=8)
    rendered = shift.render(films, "border", seed=2)[..., 0]
    for film, out in zip(films[..., 0], rendered):
        changed = out != film
        assert changed.any()
        rows, cols = np.nonzero(changed)
        values = np.unique(out[changed])
        assert len(values) == 1 and (values[0] == 0 or values[0] >= 200)
        edge_rows = (rows < 7) | (rows >= 48 - 7)
        edge_cols = (cols < 7) | (cols >= 48 - 7)
        assert (edge_rows | edge_cols).all()


def test_bit_depth_keeps_at_most_64_levels_and_window_gamma_keeps_the_order_of_greys():
    films = _films(count=4)
    assert all(len(np.unique(f)) <= 64 for f in shift.render(films, "bit_depth", seed=0))
    rendered = shift.render(films, "window_gamma", seed=0)
    for film, out in zip(films.reshape(4, -1), rendered.reshape(4, -1)):
        order = np.argsort(film, kind="stable")
        assert (np.diff(out[order].astype(int)) >= 0).all()


@pytest.mark.parametrize("family", ["resampling", "blur_sharpen", "jpeg"])
def test_a_flat_film_stays_flat_through_filters(family):
    flat = np.full((2, 32, 32, 1), 117, np.uint8)
    assert np.abs(shift.render(flat, family, seed=0).astype(int) - 117).max() <= 1


def test_training_copies_render_chains_of_the_chosen_rows_copy_major():
    films = _films(count=5)
    copies, rows = shift.training_copies(films, copies=2, seed=9, rows=[1, 3, 4])
    assert copies.shape == (6, 48, 48, 1)
    assert rows.tolist() == [1, 3, 4, 1, 3, 4]
    again, _ = shift.training_copies(films, copies=2, seed=9, rows=[1, 3, 4])
    np.testing.assert_array_equal(copies, again)
    assert not np.array_equal(copies[:3], copies[3:]), "two copies of a film differ"


def test_an_unknown_family_is_refused():
    with pytest.raises(ValueError, match="Unknown shift family"):
        shift.render(_films(1), "sepia", seed=0)
