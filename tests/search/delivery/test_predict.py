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


def _invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_predict_mixed_files_gives_probabilities_and_error_entries(exported_run, mixed_files, tmp_path):
    entries = json.loads(_invoke("predict", exported_run, *mixed_files, "--gradcam", tmp_path / "cams"))
    assert [e["path"] for e in entries] == mixed_files
    assert "error" in entries[1] and "error" in entries[2]
    for entry in (entries[0], entries[3]):
        probabilities = entry["probabilities"]
        assert set(probabilities) == {"COVID", "Normal", "Viral_Pneumonia"}
        assert sum(probabilities.values()) == pytest.approx(1, abs=1e-5)
        assert entry["predicted"] == max(probabilities, key=probabilities.get)
        assert open(entry["gradcam"], "rb").read(4) == b"\x89PNG"


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
