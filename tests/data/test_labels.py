"""Label files: NIH, CheXpert / MIMIC and multi-hot CSVs read into one multi-label table."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_tuner.data.errors import UserError
from cxr_tuner.data.labels import MASKED, decode, encode, multi_hot, read
from cxr_tuner.data.manifest import discover

# (patient, view, findings): the same seven films written in each layout.
FILMS = [
    (1, "PA", ["Cardiomegaly", "Edema"]),
    (1, "AP", ["No Finding"]),
    (2, "PA", ["Pneumothorax"]),
    (3, "AP", ["Cardiomegaly"]),
    (4, "PA", ["No Finding"]),
    (5, "PA", ["Edema", "Pneumothorax"]),
    (6, "AP", ["Cardiomegaly", "Edema", "Pneumothorax"]),
]
NAMES = ("Cardiomegaly", "Edema", "No_Finding", "Pneumothorax")
EXPECTED = np.array([[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 1], [1, 1, 0, 1]],
                    dtype=np.float32)
NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")
CHEXPERT_OBSERVATIONS = (
    "No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,"
    "Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,Support Devices").split(",")


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (4, 4), 128).save(path)


def _nih(root: Path, films=FILMS) -> Path:
    rows, seen = [NIH_HEADER], {}
    for index, (patient, view, findings) in enumerate(films):
        follow_up = seen.setdefault(patient, -1) + 1
        seen[patient] = follow_up
        name = f"{patient:08d}_{follow_up:03d}.png"
        _png(root / f"images_{1 + index // 4:03d}" / "images" / name)
        rows.append(f"{name},{'|'.join(findings)},{follow_up},{patient},58,M,{view},2682,2749,0.143,0.143,")
    (root / "Data_Entry_2017.csv").write_text("\n".join(rows) + "\n")
    return root / "Data_Entry_2017.csv"


def _chexpert_row(path: str, view: str, values: dict) -> str:
    cells = [path, "Female", "68", "Frontal", view] + [values.get(name, "") for name in CHEXPERT_OBSERVATIONS]
    return ",".join(cells)


def _chexpert(root: Path, films=FILMS, values=None) -> Path:
    folder = root / "CheXpert-v1.0-small"
    rows, studies = ["Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(CHEXPERT_OBSERVATIONS)], {}
    for patient, view, findings in films:
        studies[patient] = studies.get(patient, 0) + 1
        relative = f"CheXpert-v1.0-small/train/patient{patient:05d}/study{studies[patient]}/view1_frontal.jpg"
        _png(root / relative)
        rows.append(_chexpert_row(relative, view, values or {name: "1.0" for name in findings}))
    (folder / "train.csv").write_text("\n".join(rows) + "\n")
    return folder / "train.csv"


def _multi_hot(root: Path, films=FILMS) -> Path:
    # Nodule is not a CheXpert observation: the file is read as a generic multi-hot one.
    rows = ["path,patient_id,ViewPosition,Cardiomegaly,Edema,No Finding,Pneumothorax,Nodule"]
    for index, (patient, view, findings) in enumerate(films):
        _png(root / "img" / f"film{index}.png")
        hot = [str(int(name in findings)) for name in ("Cardiomegaly", "Edema", "No Finding", "Pneumothorax")]
        rows.append(f"img/film{index}.png,p{patient},{view}," + ",".join(hot) + ",0")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


def _one_line_error(call, match: str) -> str:
    with pytest.raises(UserError, match=match) as error:
        call()
    assert "\n" not in str(error.value)
    return str(error.value)


def test_encode_sorts_positives_then_masked_and_leaves_out_negatives():
    assert encode({"Edema": None, "Effusion": 1.0, "Cardiomegaly": 1, "Mass": 0.0}) == "Cardiomegaly|Effusion|?Edema"
    assert encode({"Mass": 0}) == ""
    assert decode("Cardiomegaly|?Edema") == {"Cardiomegaly": 1.0, "Edema": None}
    with pytest.raises(ValueError):
        encode({"Mass": 0.5})


def test_multi_hot_marks_masked_labels_and_ignores_names_not_asked_for():
    targets = multi_hot(["Cardiomegaly|Hernia|?Edema", "", "Hernia"], ["Edema", "Cardiomegaly"])
    assert targets.dtype == np.float32
    assert targets.tolist() == [[MASKED, 1.0], [0.0, 0.0], [0.0, 0.0]]


@pytest.mark.parametrize("write, layout", [(_nih, "nih"), (_chexpert, "chexpert"), (_multi_hot, "multi-hot")])
def test_each_layout_reads_the_same_multi_hot_table(tmp_path, write, layout):
    table = read(write(tmp_path))
    assert (table.task, table.layout) == ("multilabel", layout)
    assert set(NAMES) <= set(table.names)
    assert len(table.examples) == len(FILMS)
    assert multi_hot([e.label for e in table.examples], NAMES).tolist() == EXPECTED.tolist()
    assert all(Path(e.path).is_file() and Path(e.path).is_absolute() for e in table.examples)
    # Patients: films 0 and 1 share one, every other film has its own.
    groups = [e.group for e in table.examples]
    assert groups[0] == groups[1] and len(set(groups)) == 6 and "" not in groups
    assert [e.source.split("/")[-1] for e in table.examples] == [view for _, view, _ in FILMS]


def test_nih_labels_come_sorted_with_no_finding_a_label_of_its_own(tmp_path):
    table = read(_nih(tmp_path))
    assert table.names == NAMES
    assert table.examples[0].label == "Cardiomegaly|Edema" and table.examples[0].raw_label == "Cardiomegaly|Edema"
    assert [e.group for e in table.examples[:3]] == ["1", "1", "2"]


def test_chexpert_names_keep_the_file_column_order_and_patients_come_from_the_path(tmp_path):
    table = read(_chexpert(tmp_path))
    assert table.names[:3] == ("No_Finding", "Enlarged_Cardiomediastinum", "Cardiomegaly")
    assert "Pleural_Effusion" in table.names and len(table.names) == 14
    assert table.examples[0].group == "patient00001" and table.examples[0].source == "Frontal/PA"


def test_the_folder_holding_a_label_file_is_read_like_the_file(tmp_path):
    _nih(tmp_path / "nih")
    assert read(tmp_path / "nih").layout == "nih"
    _chexpert(tmp_path / "chexpert")
    assert read(tmp_path / "chexpert" / "CheXpert-v1.0-small").layout == "chexpert"


@pytest.mark.parametrize("policy, expected", [("ones", 1.0), ("zeros", 0.0), ("ignore", MASKED)])
def test_chexpert_uncertain_values_follow_the_policy(tmp_path, policy, expected):
    films = [(1, "PA", []), (2, "AP", []), (3, "PA", [])]
    csv_path = _chexpert(tmp_path, films, values={"Cardiomegaly": "1.0", "Edema": "-1.0", "Pneumothorax": "0.0"})
    lines = csv_path.read_text().splitlines()
    # Film 3: Edema blank (not mentioned: negative), Atelectasis uncertain as "-1".
    lines[3] = _chexpert_row(lines[3].split(",")[0], "PA", {"Cardiomegaly": "1", "Atelectasis": "-1"})
    csv_path.write_text("\n".join(lines) + "\n")
    table = read(csv_path, uncertain=policy)
    targets = multi_hot([e.label for e in table.examples], ["Cardiomegaly", "Edema", "Pneumothorax", "Atelectasis"])
    assert targets.tolist() == [[1, expected, 0, 0], [1, expected, 0, 0], [1, 0, 0, expected]]
    uncertain_line = next(line for line in table.lines if line.startswith("uncertain:"))
    assert "3 uncertain (-1.0) value(s)" in uncertain_line and f"--uncertain {policy}" in uncertain_line
    assert "Edema 2, Atelectasis 1" in uncertain_line


def test_chexpert_paths_resolve_against_the_csv_folder_first(tmp_path):
    folder = tmp_path / "mimic"
    _png(folder / "files" / "p10" / "s1" / "a.jpg")
    _png(folder / "files" / "p11" / "s1" / "b.jpg")
    (folder / "mimic.csv").write_text(
        "path,subject_id,study_id,ViewPosition,Cardiomegaly,Edema\n"
        "files/p10/s1/a.jpg,10,1,PA,1.0,\nfiles/p11/s1/b.jpg,11,1,AP,,1.0\n")
    table = read(folder / "mimic.csv")
    assert table.layout == "chexpert" and table.names == ("Cardiomegaly", "Edema")
    assert [(e.group, e.source, e.label) for e in table.examples] == [("10", "PA", "Cardiomegaly"), ("11", "AP", "Edema")]


def test_a_multi_hot_csv_with_some_chexpert_names_keeps_all_its_labels(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    (tmp_path / "labels.csv").write_text("path,Cardiomegaly,Nodule\na.png,1,0\nb.png,0.0,1.0\n")
    table = read(tmp_path / "labels.csv")
    assert (table.layout, table.names) == ("multi-hot", ("Cardiomegaly", "Nodule"))
    assert [e.label for e in table.examples] == ["Cardiomegaly", "Nodule"]


@pytest.mark.parametrize("write, why", [
    (_nih, "task: multilabel (Data_Entry_2017.csv has NIH's 'Finding Labels' column; 4 labels)"),
    (_chexpert, "task: multilabel (train.csv has CheXpert's observation columns; 14 labels)"),
    (_multi_hot, "task: multilabel (labels.csv has a path column and one 0/1 column per label, no label column; 5 labels)"),
])
def test_auto_task_says_what_it_decided_and_why_in_one_line(tmp_path, write, why):
    table = read(write(tmp_path))
    assert [line for line in table.lines if line.startswith("task:")] == [why]
    assert not any(line.startswith("task:") for line in read(write(tmp_path), task="multilabel").lines)


def test_single_label_data_is_read_by_discover_unchanged(tmp_path):
    for name in ("COVID/a.png", "Normal/b.png", "Normal/c.png"):
        _png(tmp_path / "tree" / name)
    table = read(tmp_path / "tree")
    assert (table.task, table.layout, table.names) == ("multiclass", "folders", ("COVID", "Normal"))
    assert table.examples == discover(tmp_path / "tree")
    assert table.lines == [f"task: multiclass ({tmp_path / 'tree'} is a folder per class; 2 classes)"]
    # A folder's metadata.csv comes before its Data_Entry_2017.csv.
    _nih(tmp_path / "tree")
    (tmp_path / "tree" / "metadata.csv").write_text("path,label\nCOVID/a.png,COVID\nNormal/b.png,Normal\n")
    table = read(tmp_path / "tree")
    assert (table.layout, len(table.examples)) == ("csv", 2)
    assert table.lines == ["task: multiclass (metadata.csv has a label column; 2 classes)"]


def test_a_task_the_file_does_not_fit_says_which_task_fits(tmp_path):
    message = _one_line_error(lambda: read(_nih(tmp_path / "nih"), task="multiclass"), "use --task multilabel")
    assert "Finding Labels" in message
    for name in ("COVID/a.png", "Normal/b.png"):
        _png(tmp_path / "tree" / name)
    _one_line_error(lambda: read(tmp_path / "tree", task="multilabel"), "use --task multiclass")
    _one_line_error(lambda: read(tmp_path / "tree", task="both"), "--task both is not one of")
    _one_line_error(lambda: read(tmp_path / "tree", uncertain="maybe"), "--uncertain maybe is not one of")


def test_views_keep_the_films_of_those_views_and_say_how_many(tmp_path):
    table = read(_nih(tmp_path / "nih"), views=["pa"])
    assert [e.source for e in table.examples] == ["PA"] * 4
    assert table.lines[-1] == "views pa: kept 4 of 7 films, filtered out 3 (AP 3)"
    assert len(read(tmp_path / "nih", views=["PA", "AP"]).examples) == 7
    # CheXpert's "Frontal/AP": either part matches.
    chexpert = _chexpert(tmp_path / "chexpert")
    assert len(read(chexpert, views="AP").examples) == 3
    assert len(read(chexpert, views=["Frontal"]).examples) == 7


def test_views_that_keep_nothing_or_a_file_without_views_are_user_errors(tmp_path):
    message = _one_line_error(lambda: read(_nih(tmp_path / "nih"), views=["LL"]), "keeps none of the 7 films")
    assert "AP, PA" in message
    csv_path = tmp_path / "plain" / "labels.csv"
    _png(tmp_path / "plain" / "a.png")
    csv_path.write_text("path,Cardiomegaly\na.png,1\n")
    _one_line_error(lambda: read(csv_path, views=["PA"]), "has no view column")
    for name in ("COVID/a.png", "Normal/b.png"):
        _png(tmp_path / "tree" / name)
    _one_line_error(lambda: read(tmp_path / "tree", views=["PA"]), "has no view column")


def test_an_image_name_found_twice_under_the_nih_folder_names_both_paths(tmp_path):
    csv_path = _nih(tmp_path)
    _png(tmp_path / "images_009" / "images" / "00000001_000.png")
    message = _one_line_error(lambda: read(csv_path), "found twice")
    assert str(tmp_path / "images_001" / "images" / "00000001_000.png") in message
    assert str(tmp_path / "images_009" / "images" / "00000001_000.png") in message


def _replace(csv_path: Path, old: str, new: str) -> Path:
    text = csv_path.read_text()
    assert old in text
    csv_path.write_text(text.replace(old, new, 1))
    return csv_path


@pytest.mark.parametrize("write, old, new, message", [
    (_nih, "Patient ID,", "Patient,", r"lacks NIH column\(s\) patient_id; it has image_index, finding_labels"),
    (_nih, "00000002_000.png,", "00000099_000.png,", r"1 listed file\(s\) do not exist \(00000099_000.png\)"),
    (_nih, ",Pneumothorax,", ",,", "line 4, column Finding Labels: empty"),
    (_nih, "00000002_000.png,", "00000001_000.png,", "more than once"),
    (_chexpert, "Path,", "File,", "has no path column"),
    (_chexpert, "1.0,", "2.0,", r"line 2, column Cardiomegaly: value '2.0' is not one of 1.0, 0.0, -1.0"),
    (_chexpert, "patient00002/", "patient00099/", r"1 listed file\(s\) do not exist .*patient00099"),
    (_chexpert, "CheXpert-v1.0-small/train/patient00002", "../train/patient00002", "points outside"),
    (_multi_hot, ",1,", ",yes,", r"line 2, column Cardiomegaly: value 'yes' is not one of 0, 1"),
    (_multi_hot, "img/film1.png", "img/film0.png", "more than once"),
    (_multi_hot, "img/film2.png", "/img/film2.png", "absolute path"),
    (_multi_hot, ",Cardiomegaly,Edema,No Finding,Pneumothorax", ",Cardiomegaly,cardiomegaly,D,E", "columns .* name the same label"),
])
def test_a_bad_label_file_is_one_user_error_line_naming_the_problem(tmp_path, write, old, new, message):
    csv_path = _replace(write(tmp_path), old, new)
    _one_line_error(lambda: read(csv_path), message)


def test_a_label_file_without_labels_or_without_positives_is_a_user_error(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "labels.csv").write_text("path,patient_id,site\na.png,p1,H1\n")
    _one_line_error(lambda: read(tmp_path / "labels.csv"), "has no label column")
    (tmp_path / "labels.csv").write_text("path,Cardiomegaly,Edema\na.png,0,0.0\n")
    _one_line_error(lambda: read(tmp_path / "labels.csv"), "no film has a positive label")


def test_chexpert_names_with_another_label_column_read_as_multi_hot_and_say_why_minus_one_is_refused(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "labels.csv").write_text("path,Cardiomegaly,Edema\na.png,1,0\n")
    assert read(tmp_path / "labels.csv").layout == "chexpert"  # the same table for 0/1 values
    (tmp_path / "labels.csv").write_text("path,Cardiomegaly,Edema,Nodule\na.png,1,-1.0,0\n")
    message = _one_line_error(lambda: read(tmp_path / "labels.csv"), "column Edema: value '-1.0' is not one of 0, 1")
    assert "because of its column(s) nodule" in message


def test_a_train_csv_with_a_label_column_is_single_label(tmp_path):
    for name in ("COVID/a.png", "Normal/b.png"):
        _png(tmp_path / name)
    (tmp_path / "train.csv").write_text("path,label\nCOVID/a.png,Normal\nNormal/b.png,COVID\n")
    table = read(tmp_path)
    assert (table.layout, [e.label for e in table.examples]) == ("csv", ["Normal", "COVID"])
