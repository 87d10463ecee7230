"""Bad input through the command line: one clear line, the right exit, nothing computed lost.

Every case runs `cli.py` with CliRunner. A failure must be a ``UserError`` turned into
one ``Error: ...`` line and exit status 1 (an uncaught exception would also exit 1 but
leave ``result.exception`` set, which the checks below refuse); a bad file that the run
can do without is skipped, listed with its reason, and the run finishes.
"""

import errno
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from cxr_tuner.data import cache, synthetic, synthetic_findings
from cxr_tuner.data.images import decode_image
from cxr_tuner.search.engine.layout import RunLayout
from tests.conftest import FAST_SEARCH, error_line, phantom_folders, run_cli, tree_digest

def _search(data, run_dir, *extra, flags=FAST_SEARCH):
    return run_cli("search", "--data", data, "--run-dir", run_dir, *flags, *extra)


def _noise_png(path: Path, size: int = 64, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size), np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def mixed_data(tmp_path_factory):
    """Phantoms plus unusual-but-valid files and broken files, in the class folders."""
    root = phantom_folders(tmp_path_factory.mktemp("mixed") / "data")
    covid = root / "COVID"
    grey = [np.asarray(Image.open(covid / f"COVID-{i}.png")) for i in range(1, 5)]
    Image.fromarray(grey[0].astype(np.uint16) * 16).save(covid / "COVID-1.png")  # 12-bit in 16-bit
    Image.fromarray(grey[1]).convert("RGBA").save(covid / "COVID-2.png")
    Image.fromarray(grey[2]).convert("P").save(covid / "COVID-3.png")
    Image.fromarray(grey[3]).convert("CMYK").save(covid / "COVID-4.jpg")
    (covid / "COVID-4.png").unlink()
    normal = root / "Normal"
    (normal / "empty.png").write_bytes(b"")
    full = _noise_png(normal / "full.png").read_bytes()
    (normal / "full.png").unlink()
    (normal / "cut.png").write_bytes(full[: len(full) // 2])
    (normal / "notes.jpg").write_text("scanned at night, see ticket 1234")
    Image.new("1", (10_000, 10_000)).save(normal / "bomb.png")  # 100 Mpx in a few kB
    return root


@pytest.fixture(scope="module")
def mixed_run(mixed_data, tmp_path_factory):
    """A finished fast search over ``mixed_data``: (run dir, CliRunner result)."""
    run_dir = tmp_path_factory.mktemp("mixed-run") / "run"
    return run_dir, _search(mixed_data, run_dir)


@pytest.fixture
def run_copy(mixed_run, tmp_path):
    """A private copy of the finished run, for tests that try to damage it."""
    copy = tmp_path / "run"
    shutil.copytree(mixed_run[0], copy)
    return copy


# --- the data path ---------------------------------------------------------------------

def test_missing_data_path(tmp_path):
    result = _search(tmp_path / "nowhere", tmp_path / "run")
    error_line(result, "nowhere does not exist", "pass a folder of images or a CSV")


def test_empty_data_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    result = _search(tmp_path / "empty", tmp_path / "run")
    error_line(result, "No images found under", "a folder per class")


def test_a_file_that_is_not_a_manifest(tmp_path):
    path = _noise_png(tmp_path / "one.png")
    error_line(_search(path, tmp_path / "run"), "not a .csv manifest", "pass the folder")


def test_class_folder_without_a_readable_image(tmp_path):
    root = phantom_folders(tmp_path / "data", n_per_class=8)
    broken = root / "Lung_Opacity"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"")
    (broken / "b.jpg").write_text("not a picture")
    result = _search(root, tmp_path / "run")
    error_line(result, "Class Lung_Opacity has no readable image", "all 2 of its files",
                "skipped.csv", "remove that class folder")
    skipped = RunLayout(tmp_path / "run").skipped.read_text()
    assert "zero-byte file" in skipped and "not an image" in skipped


def test_only_one_class(tmp_path):
    root = phantom_folders(tmp_path / "data", n_per_class=8)
    for name in ("Normal", "Viral_Pneumonia"):
        shutil.rmtree(root / name)
    error_line(_search(root, tmp_path / "run"), "Only one class (COVID)", "at least two")


def test_class_too_small_for_every_split(tmp_path):
    root = phantom_folders(tmp_path / "data", n_per_class=8)
    for path in sorted((root / "Viral_Pneumonia").iterdir())[3:]:
        path.unlink()
    result = _search(root, tmp_path / "run")
    error_line(result, "Class Viral_Pneumonia has 3 image(s) in 3 near-duplicate or patient group(s)",
                "needs at least 7 groups", "Add images of that class or leave it out")


# --- single bad files: skipped with a reason, the run goes on ---------------------------

def test_broken_files_are_skipped_listed_and_the_search_finishes(mixed_run):
    run_dir, result = mixed_run
    assert result.exit_code == 0, result.output
    assert "best trial" in result.output
    assert "4 skipped" in result.output and "skipped.csv" in result.output
    reasons = {Path(row.split(",")[0]).name: row.split(",", 1)[1]
               for row in RunLayout(run_dir).skipped.read_text().splitlines()[1:]}
    assert reasons == {"empty.png": "zero-byte file", "cut.png": "truncated image",
                       "notes.jpg": "not an image", "bomb.png": "decompression bomb: 10000x10000 pixels"}


def test_16_bit_rgba_palette_png_and_cmyk_jpeg_are_used(mixed_run):
    run_dir, result = mixed_run
    assert result.exit_code == 0, result.output
    used = {Path(line.split(",")[0]).name for line in RunLayout(run_dir).split.read_text().splitlines()[1:]}
    assert {"COVID-1.png", "COVID-2.png", "COVID-3.png", "COVID-4.jpg"} <= used


def test_unusual_formats_decode_to_the_same_picture(mixed_data, tmp_path):
    # Each flavour was made from an 8-bit phantom; decoding must give back (nearly) its pixels.
    reference = phantom_folders(tmp_path / "again") / "COVID"
    for name, original in [("COVID-1.png", "COVID-1.png"), ("COVID-2.png", "COVID-2.png"),
                           ("COVID-3.png", "COVID-3.png"), ("COVID-4.jpg", "COVID-4.png")]:
        flavour = decode_image(mixed_data / "COVID" / name, 32).astype(float)
        plain = decode_image(reference / original, 32).astype(float)
        assert np.corrcoef(flavour.ravel(), plain.ravel())[0, 1] > 0.95, name


# --- manifests --------------------------------------------------------------------------

def _manifest(root: Path, header: str, rows: list[str]) -> Path:
    path = root / "manifest.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.fixture
def csv_root(tmp_path):
    return phantom_folders(tmp_path / "data", n_per_class=8)


def test_manifest_without_path_and_label_columns(csv_root, tmp_path):
    path = _manifest(csv_root, "file,diagnosis", ["COVID/COVID-1.png,COVID"])
    # Said for every layout a label file can have: single-label, NIH, CheXpert and multi-hot.
    error_line(_search(path, tmp_path / "run"), "has no path column", "it has file, diagnosis",
               "path,label (single-label)", "Finding Labels (NIH)", "rename the columns")


def test_manifest_extra_columns_are_ignored_and_patient_id_spellings_accepted(csv_root, tmp_path):
    rows = [f"{c}/{c}-{i}.png,{c},p{c}{i},site-a" for c in synthetic.CLASS_NAMES for i in range(1, 9)]
    path = _manifest(csv_root, "Path,Label,Patient ID,source", rows)
    result = _search(path, tmp_path / "run")
    assert result.exit_code == 0, result.output
    groups = {line.split(",")[2] for line in RunLayout(tmp_path / "run").split.read_text().splitlines()[1:]}
    assert {"pCOVID1", "pNormal8"} <= groups  # the patient column was read


def test_manifest_listing_missing_files(csv_root, tmp_path):
    path = _manifest(csv_root, "path,label", ["COVID/COVID-1.png,COVID", "COVID/gone.png,COVID"])
    error_line(_search(path, tmp_path / "run"), "1 listed file(s) do not exist (COVID/gone.png)",
                "fix the paths or remove those rows")


def test_manifest_with_an_absolute_path(csv_root, tmp_path):
    absolute = csv_root / "COVID" / "COVID-1.png"
    path = _manifest(csv_root, "path,label", [f"{absolute},COVID"])
    error_line(_search(path, tmp_path / "run"), "line 2: absolute path", "write paths relative to")


def test_manifest_path_leaving_the_data_root(csv_root, tmp_path):
    _noise_png(csv_root.parent / "outside.png")
    path = _manifest(csv_root, "path,label", ["../outside.png,COVID"])
    error_line(_search(path, tmp_path / "run"), "line 2: ../outside.png points outside the data folder",
                "keep the images inside the CSV's folder")


def test_manifest_that_is_not_utf8(csv_root, tmp_path):
    path = csv_root / "manifest.csv"
    path.write_bytes("path,label\nCOVID/COVID-1.png,Pneumonie virale \xe9\n".encode("latin-1"))
    error_line(_search(path, tmp_path / "run"), "not a readable UTF-8 CSV", "save it as CSV (UTF-8)")


# --- settings ---------------------------------------------------------------------------

def test_unknown_backbone_even_with_overwrite_deletes_nothing(run_copy, mixed_data):
    before = tree_digest(run_copy)
    flags = [*FAST_SEARCH, "--overwrite"]
    flags[flags.index("vanilla_cnn")] = "resnet5O"
    result = _search(mixed_data, run_copy, flags=flags)
    error_line(result, "Unknown backbone 'resnet5O'", "mobilenet_025")
    assert tree_digest(run_copy) == before


def test_imagenet_weights_offline_without_the_file(run_copy, mixed_data, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty-keras-home"))
    fetched = []

    def offline(*args, **kwargs):
        fetched.append(kwargs.get("origin") or args)
        raise Exception("URL fetch failure: no network")  # what Keras raises offline

    monkeypatch.setattr(keras.src.utils.file_utils, "get_file", offline)
    before = tree_digest(run_copy)
    flags = [*FAST_SEARCH, "--overwrite"]
    # mobilenet_v2: the package ships no copy of its weights (it does of mobilenet_025's).
    flags[flags.index("vanilla_cnn")], flags[flags.index("none")] = "mobilenet_v2", "imagenet"
    result = _search(mixed_data, run_copy, flags=flags)
    error_line(result, "ImageNet weights for mobilenet_v2 are not available offline",
               "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5", "empty-keras-home",
               "--weights none")
    assert fetched, "the offline fetch was not attempted (a real download would have been)"
    assert tree_digest(run_copy) == before


def test_disk_full_while_writing_the_cache(csv_root, tmp_path, monkeypatch):
    real_add = cache._add_entry
    calls = []

    def fills_up(*args):
        calls.append(1)
        if len(calls) > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_add(*args)

    monkeypatch.setattr(cache, "_add_entry", fills_up)
    run_dir = tmp_path / "run"
    result = _search(csv_root, run_dir)
    error_line(result, "Not enough disk space for the decoded-image cache", str(RunLayout(run_dir).cache),
                "free some space")
    assert not list(RunLayout(run_dir).cache.rglob("*.partial"))  # no half-written pixel file left
    assert not RunLayout(run_dir).split.exists()
    monkeypatch.setattr(cache, "_add_entry", real_add)  # space freed: the same command works
    assert _search(csv_root, run_dir).exit_code == 0


# --- resuming a finished run --------------------------------------------------------------

def test_resume_with_a_vanished_image_keeps_split_and_trials(run_copy, mixed_data):
    before = {k: v for k, v in tree_digest(run_copy).items() if not k.startswith("cache")}
    image = mixed_data / "Normal" / "Normal-2.png"
    hidden = image.with_suffix(".moved")
    image.rename(hidden)
    try:
        result = _search(mixed_data, run_copy)
    finally:
        hidden.rename(image)
    error_line(result, "1 image(s) of", "Normal-2.png: file missing",
                "restore them or start over with --overwrite")
    after = {k: v for k, v in tree_digest(run_copy).items() if not k.startswith("cache")}
    assert after == before
    again = _search(mixed_data, run_copy)  # image back: resumes, adds no trial
    assert again.exit_code == 0, again.output
    assert tree_digest(RunLayout(run_copy).tuner) == {k[len("tuner/"):]: v for k, v in before.items()
                                                if k.startswith("tuner/")}


@pytest.mark.parametrize("changed, difference", [
    (("--image-size", "48"), "image_size: 32 -> 48"),
    (("--precision", "mixed_bfloat16"), "precision: 'float32' -> 'mixed_bfloat16'"),
])
def test_resume_with_other_settings_keeps_the_run(run_copy, mixed_data, changed, difference):
    before = tree_digest(run_copy)
    flags = [*FAST_SEARCH]
    flag, value = changed
    if flag in flags:
        flags[flags.index(flag) + 1] = value
    else:
        flags += [flag, value]
    result = _search(mixed_data, run_copy, flags=flags)
    error_line(result, f"holds a run with other settings ({difference})",
                "repeat the original flags to resume, or --overwrite")
    assert tree_digest(run_copy) == before


# --- evaluation on an external folder ---------------------------------------------------

def test_external_test_set_with_a_class_training_never_saw(run_copy, tmp_path):
    assert run_cli("retrain", run_copy, "--top-k", 1, "--max-epochs", 1).exit_code == 0
    external = phantom_folders(tmp_path / "external", n_per_class=2)
    shutil.copytree(external / "COVID", external / "Tuberculosis")
    result = run_cli("evaluate", run_copy, "--data", external)
    error_line(result, "holds classes the model does not know: Tuberculosis",
                "it knows COVID, Normal, Viral_Pneumonia", "remove or rename those folders")


def test_search_refuses_a_bad_external_set_before_the_search(run_copy, mixed_data, tmp_path):
    job = [flag for flag in FAST_SEARCH if flag != "--no-retrain"]
    external = phantom_folders(tmp_path / "external", n_per_class=1)
    shutil.copytree(external / "COVID", external / "Tuberculosis")
    before = tree_digest(run_copy)
    error_line(_search(mixed_data, run_copy, "--external", tmp_path / "nowhere", flags=job),
               f"--external {tmp_path / 'nowhere'} does not exist")
    error_line(_search(mixed_data, run_copy, "--external", external), "--no-retrain")
    error_line(_search(mixed_data, run_copy, "--external", external, flags=job),
               "holds classes the model does not know: Tuberculosis")
    findings = synthetic_findings.write_multilabel_demo(tmp_path / "findings", n_films=12, size=32,
                                                        min_positive_patients=1) / synthetic_findings.MULTILABEL_CSV
    error_line(_search(mixed_data, run_copy, "--external", findings, flags=job), "labels findings")
    assert tree_digest(run_copy) == before  # a resumed run: nothing of it changed
    fresh = tmp_path / "fresh"
    error_line(_search(mixed_data, fresh, "--external", external, flags=job), "Tuberculosis")
    assert not RunLayout(fresh).split.exists()  # a new run: refused before its data stage


# --- the audit command ----------------------------------------------------------------------

def test_audit_of_a_missing_path_and_to_an_unwritable_file(tmp_path, csv_root):
    error_line(run_cli("data", "audit", tmp_path / "nowhere"), "does not exist")
    result = run_cli("data", "audit", csv_root, "--out", tmp_path / "no" / "such" / "dir" / "a.csv")
    error_line(result, "Cannot write the audit CSV", "pass --out with a writable file path")
