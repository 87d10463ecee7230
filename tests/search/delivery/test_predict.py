"""predict and gradcam on the command line: JSON per image, bad files reported, not fatal."""

import json
import shutil

import pytest
from click.testing import CliRunner

from cxr_tuner.cli import cli
from cxr_tuner.data.errors import UserError
from cxr_tuner.search.engine.layout import RunLayout
from cxr_tuner.search.delivery.predict import load_model


@pytest.fixture
def mixed_files(demo_data, tmp_path):
    good = sorted((demo_data / "COVID").glob("*.png"))[:2]
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return [str(good[0]), str(corrupt), str(tmp_path / "missing.png"), str(good[1])]


def _invoke(*args, exit_code=0):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == exit_code, result.output
    return result.output


def test_predict_prints_json_lines_and_fails_when_any_image_failed(exported_run, mixed_files, tmp_path):
    result = CliRunner().invoke(cli, ["predict", str(exported_run), *mixed_files, "--gradcam", str(tmp_path / "cams")])
    assert result.exit_code == 1  # two of the four images could not be read
    entries = [json.loads(line) for line in result.stdout.splitlines()]  # JSON Lines: one object per line
    assert [e["path"] for e in entries] == mixed_files
    assert "error" in entries[1] and entries[2]["error"] == f"no such file: {mixed_files[2]}"
    assert result.stderr.strip() == "Error: 2 of 4 image(s) could not be read (their lines say why)."
    card = json.loads((RunLayout(exported_run).export / "model_card.json").read_text())
    point = card.get("operating_point")
    for entry in (entries[0], entries[3]):
        probabilities = entry["probabilities"]
        assert set(probabilities) == {"COVID", "Normal", "Viral_Pneumonia"}
        assert sum(probabilities.values()) == pytest.approx(1, abs=1e-5)
        assert entry["argmax"] == max(probabilities, key=probabilities.get)
        if point:  # the card's rule decides, not the argmax
            others = {k: v for k, v in probabilities.items() if k != point["class"]}
            called = probabilities[point["class"]] >= point["threshold"]
            assert entry["decision"] == (point["class"] if called else max(others, key=others.get))
        else:
            assert entry["decision"] == entry["argmax"]
        assert open(entry["gradcam"], "rb").read(4) == b"\x89PNG"
    assert "Exit status: 0 when every image was read, 1 when any was not" in " ".join(
        _invoke("predict", "--help").split())


def test_predict_decides_by_the_operating_point_of_the_model_card(exported_run, mixed_files, tmp_path):
    export = shutil.copytree(RunLayout(exported_run).export, tmp_path / "export")
    card = json.loads((export / "model_card.json").read_text())
    card["operating_point"] = {"class": "Normal", "threshold": 0.0, "how_to_apply": "call Normal when p >= 0"}
    (export / "model_card.json").write_text(json.dumps(card))
    (entry,) = [json.loads(line) for line in _invoke("predict", export / "model.keras", mixed_files[0]).splitlines()]
    assert entry["decision"] == "Normal" and entry["operating_point"]["called"]
    assert entry["decided_by"] == "operating point: call Normal when p >= 0"


def test_keras_file_takes_class_names_from_its_model_card(exported_run, tmp_path):
    shutil.copytree(RunLayout(exported_run).export, tmp_path / "export")
    _, names = load_model(tmp_path / "export" / "model.keras")
    assert names == ("COVID", "Normal", "Viral_Pneumonia")
    (tmp_path / "export" / "model_card.json").unlink()
    with pytest.raises(UserError, match="model_card.json"):
        load_model(tmp_path / "export" / "model.keras")


def test_gradcam_command_explains_a_chosen_class(exported_run, mixed_files, tmp_path):
    output = _invoke("gradcam", exported_run, mixed_files[0], "--class", "Normal", "--out", tmp_path)
    assert str(tmp_path / "COVID-1-gradcam.png") in output
    result = CliRunner().invoke(cli, ["gradcam", str(exported_run), mixed_files[0], "--class", "Cat"])
    assert result.exit_code == 1 and "Unknown class 'Cat'" in result.output
