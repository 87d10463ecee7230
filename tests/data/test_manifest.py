"""Discovery of labelled images from the folder layouts and CSV manifests users have."""

from pathlib import Path

import pytest

from cxr_tuner.data.errors import UserError
from cxr_tuner.data.manifest import class_mapping, class_names, discover, ignored_columns, normalise_label


def _touch(root: Path, *relative: str) -> None:
    # discover() never opens the files, so empty ones are enough here.
    for name in relative:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def _labels(examples):
    return {Path(e.path).name: e.label for e in examples}


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("COVID-19", "COVID"), ("covid", "COVID"), ("COVID", "COVID"),
        ("NORMAL", "Normal"), ("normal", "Normal"),
        ("Viral Pneumonia", "Viral_Pneumonia"), ("viral_pneumonia", "Viral_Pneumonia"),
        ("Lung_Opacity", "Lung_Opacity"), ("Lung Opacity", "Lung_Opacity"),
        ("bacterial pneumonia", "Bacterial_Pneumonia"), ("tuberculosis", "Tuberculosis"),
        ("pleural-effusion", "Pleural_Effusion"),
    ],
)
def test_normalise_label(raw, expected):
    assert normalise_label(raw) == expected


def test_radiography_v1_layout(tmp_path):
    _touch(tmp_path, "COVID-19/a.png", "NORMAL/b.PNG", "Viral Pneumonia/c.jpg", "notes.txt")
    examples = discover(tmp_path)
    assert _labels(examples) == {"a.png": "COVID", "b.PNG": "Normal", "c.jpg": "Viral_Pneumonia"}
    assert class_mapping(examples)["Viral_Pneumonia"] == ["Viral Pneumonia"]
    assert all(Path(e.path).is_absolute() and e.group == "" for e in examples)


def test_radiography_v4_layout_ignores_masks(tmp_path):
    _touch(
        tmp_path, "COVID/images/COVID-1.png", "COVID/masks/COVID-1.png",
        "Lung_Opacity/images/Lung_Opacity-1.png", "Normal/images/Normal-1.png",
    )
    examples = discover(tmp_path)
    assert len(examples) == 3
    assert class_names(examples) == ["COVID", "Lung_Opacity", "Normal"]
    assert not any("masks" in e.path for e in examples)


def test_kermany_layout_labels_from_file_names_and_patient_groups(tmp_path):
    _touch(
        tmp_path, "train/NORMAL/IM-0115-0001.jpeg", "train/PNEUMONIA/person1_virus_6.jpeg",
        "val/PNEUMONIA/person1_virus_7.jpeg", "test/PNEUMONIA/person3_bacteria_10.jpeg",
    )
    by_name = {Path(e.path).name: e for e in discover(tmp_path)}
    assert by_name["person1_virus_6.jpeg"].label == "Viral_Pneumonia"
    assert by_name["person3_bacteria_10.jpeg"].label == "Bacterial_Pneumonia"
    assert by_name["IM-0115-0001.jpeg"].label == "Normal"
    # The same patient appears in Kermany's train and val folders: one group, split by us.
    assert by_name["person1_virus_6.jpeg"].group == "person1"
    assert by_name["person1_virus_7.jpeg"].group == "person1"


def test_discover_is_sorted_and_deterministic(tmp_path):
    _touch(tmp_path, "b/2.png", "a/9.png", "b/1.dcm", "a/3.jpeg")
    paths = [e.path for e in discover(tmp_path)]
    assert paths == sorted(paths) == [e.path for e in discover(tmp_path)]
    assert len(paths) == 4


def test_csv_manifest_file_with_patient_ids(tmp_path):
    _touch(tmp_path, "img/1.png", "img/2.png", "img/3.png")
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(
        "path,label,patient_id\nimg/1.png,covid,p1\nimg/2.png,COVID,p1\nimg/3.png,NORMAL,\n"
    )
    examples = discover(csv_path)
    assert [(Path(e.path).name, e.label, e.group) for e in examples] == [
        ("1.png", "COVID", "p1"), ("2.png", "COVID", "p1"), ("3.png", "Normal", ""),
    ]
    assert class_mapping(examples)["COVID"] == ["COVID", "covid"]


def test_folder_with_metadata_csv_uses_the_csv(tmp_path):
    _touch(tmp_path, "COVID/1.png", "Normal/2.png")
    # The CSV's labels win over folder names, and extra columns are ignored.
    (tmp_path / "metadata.csv").write_text(
        "path,label,patient_id,source\n"
        "COVID/1.png,Viral_Pneumonia,person9,x\nNormal/2.png,Normal,,y\n"
    )
    examples = discover(tmp_path)
    assert [(e.label, e.group) for e in examples] == [
        ("Viral_Pneumonia", "person9"), ("Normal", ""),
    ]


@pytest.mark.parametrize(
    "rows, message",
    [
        ("file,class\na.png,COVID\n", "it has file, class"),
        ("path,label\nmissing.png,COVID\na.png,Normal\n", "missing.png"),
        ("path,label\n/etc/a.png,COVID\na.png,Normal\n", "absolute path"),
        ("path,label\n../outside.png,COVID\na.png,Normal\n", "outside the data folder"),
        ("path,label\na.png,COVID\na.png,Normal\n", "more than once"),
    ],
)
def test_bad_csv_rows_are_user_errors(tmp_path, rows, message):
    data = tmp_path / "data"
    _touch(data, "a.png")
    _touch(tmp_path, "outside.png")
    (data / "manifest.csv").write_text(rows)
    with pytest.raises(UserError, match=message):
        discover(data)


def test_missing_path_no_images_and_one_class_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        discover(tmp_path / "nope")
    _touch(tmp_path, "COVID/readme.txt")
    with pytest.raises(UserError, match=r"\.png.*folder per class"):
        discover(tmp_path)
    _touch(tmp_path, "COVID/a.png")
    with pytest.raises(UserError, match="Only one class"):
        discover(tmp_path)


def test_dicom_patient_id_from_the_header_when_nothing_else_says(tmp_path, monkeypatch):
    from cxr_tuner.data import dicom

    monkeypatch.setattr(dicom, "dicom_patient_id", lambda path: f"pid-{Path(path).stem}")
    _touch(tmp_path, "COVID/a.dcm", "Normal/b.DCM", "Normal/c.png")
    (tmp_path / "manifest.csv").write_text(
        "path,label,patient_id\nCOVID/a.dcm,COVID,\nNormal/b.DCM,Normal,p2\n"
    )
    assert [e.group for e in discover(tmp_path)] == ["pid-a", "p2"]
    (tmp_path / "manifest.csv").unlink()
    assert [e.group for e in discover(tmp_path)] == ["pid-a", "pid-b", ""]


@pytest.mark.parametrize("header", ["Path,Label,Patient ID", "path,label,PatientID", "PATH,LABEL,patient-id"])
def test_csv_column_names_ignore_case_and_separators(tmp_path, header):
    _touch(tmp_path, "a.png", "b.png")
    (tmp_path / "manifest.csv").write_text(f"{header},source\na.png,COVID,p1,x\nb.png,Normal,p2,y\n")
    assert [(e.label, e.group) for e in discover(tmp_path)] == [("COVID", "p1"), ("Normal", "p2")]


def test_a_data_file_that_is_not_a_csv_or_not_utf8_is_a_user_error(tmp_path):
    _touch(tmp_path, "a.png")
    with pytest.raises(UserError, match="not a .csv manifest"):
        discover(tmp_path / "a.png")
    (tmp_path / "labels.csv").write_bytes("path,label\na.png,Pneumonie \xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match="not a readable UTF-8 CSV"):
        discover(tmp_path / "labels.csv")


@pytest.mark.parametrize("patient", ["patient_id", "PatientID", "subject_id", "patient"])
@pytest.mark.parametrize("source", ["source", "Site", "hospital", "dataset"])
def test_csv_patient_and_source_spellings_are_read(tmp_path, patient, source):
    _touch(tmp_path, "a.png", "b.png")
    (tmp_path / "manifest.csv").write_text(f"path,label,{patient},{source}\na.png,COVID,p1,H1\nb.png,Normal,p2,H2\n")
    assert [(e.group, e.source) for e in discover(tmp_path)] == [("p1", "H1"), ("p2", "H2")]
    assert ignored_columns(tmp_path) == []


def test_unknown_csv_columns_are_listed_as_ignored(tmp_path):
    _touch(tmp_path, "a.png", "b.png")
    (tmp_path / "manifest.csv").write_text(
        "path,label,patient_id,subject_id,view,source\na.png,COVID,p1,s1,PA,H1\nb.png,Normal,p2,s2,AP,H2\n")
    assert [e.group for e in discover(tmp_path)] == ["p1", "p2"]  # the first patient spelling wins
    assert ignored_columns(tmp_path) == ["subject_id", "view"]
    assert ignored_columns(tmp_path / "manifest.csv") == ["subject_id", "view"]
