"""The NIH ChestX-ray14 look-alike label file: NIH's exact layout, its folders, names given or drawn."""

import csv

import pytest
from PIL import Image

from cxr_tuner.data.synthetic_nih import NIH_FINDINGS, NIH_HEADER, NIH_NO_FINDING, write_nih_label_file


def test_nih_label_file_header_rows_and_folders(tmp_path):
    path = write_nih_label_file(tmp_path / "nih", n_rows=120, seed=1)
    assert path.name == "Data_Entry_2017.csv"
    lines = path.read_text().splitlines()
    assert lines[0] == ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
                        "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],") == NIH_HEADER
    rows = list(csv.reader(lines[1:]))
    assert len(rows) == 120 and {len(row) for row in rows} == {12} and {row[-1] for row in rows} == {""}
    allowed = set(NIH_FINDINGS)
    for name, findings, follow_up, patient, *_ in rows:
        assert name == f"{int(patient):08d}_{int(follow_up):03d}.png"
        assert findings == NIH_NO_FINDING or (set(findings.split("|")) <= allowed
                                              and findings.split("|") == sorted(findings.split("|")))
    assert len({row[3] for row in rows}) < 80  # patients hold several films
    folders = sorted(p.relative_to(path.parent).as_posix() for p in path.parent.glob("images_*/images"))
    assert folders == [f"images_{k:03d}/images" for k in range(1, 13)]
    found = {p.name: p.parent.parent.name for p in path.parent.glob("images_*/images/*.png")}
    assert set(found) == {row[0] for row in rows}
    # Name order fills the folders in turn, and one file decodes.
    assert [found[row[0]] for row in rows] == sorted(found[row[0]] for row in rows)
    assert Image.open(path.parent / "images_001" / "images" / rows[0][0]).size == (32, 32)


def test_nih_label_file_takes_names_and_may_skip_films(tmp_path):
    names = ["00000003_000.png", "00000003_001.png", "other.png"]
    path = write_nih_label_file(tmp_path, n_rows=3, image_names=names, write_films=False)
    rows = list(csv.reader(path.read_text().splitlines()[1:]))
    assert [row[0] for row in rows] == names and [row[2:4] for row in rows[:2]] == [["0", "3"], ["1", "3"]]
    assert not list(tmp_path.glob("images_*"))
    with pytest.raises(ValueError, match="image names"):
        write_nih_label_file(tmp_path, n_rows=2, image_names=names)
