"""Starting over leaves nothing a later stage could read as current."""

import shutil

import pytest

from cxr_tuner.search.engine.config import load_config
from cxr_tuner.search.engine.layout import RunLayout
from tests.conftest import error_line, run_cli

# The cheapest search (one trial of one epoch): --overwrite starts over whatever the old run's settings.
_RUN_FLAGS = ("--backbones", "vanilla_cnn", "--weights", "none", "--image-size", 32, "--max-epochs", 1,
              "--tuner", "random", "--max-trials", 1, "--batch-size", 16)


@pytest.fixture
def exported_copy(exported_run, tmp_path):
    """A private copy of the shared run after evaluate and export: winners, report and export all there."""
    copy = tmp_path / "run"
    shutil.copytree(exported_run, copy)
    return copy


def test_overwrite_with_a_new_split_leaves_no_old_winner_to_evaluate(exported_copy, demo_data, tmp_path):
    run_copy = exported_copy
    layout = RunLayout(run_copy)
    old_split = layout.split.read_text()
    for made in (layout.winners, layout.report, layout.export):
        assert made.is_dir()
    kept = tmp_path / "old-winners"
    shutil.copytree(layout.winners, kept)

    result = run_cli("search", "--data", demo_data, "--run-dir", run_copy, *_RUN_FLAGS,
                     "--seed", 5, "--overwrite", "--no-retrain")
    assert result.exit_code == 0, result.output
    assert layout.split.read_text() != old_split  # a new split: old winners saw its test images
    for stale in (layout.winners, layout.report, layout.export):
        assert not stale.exists(), f"{stale} survived --overwrite"
    assert "retrain" in error_line(run_cli("evaluate", run_copy))
    assert "retrain" in error_line(run_cli("export", run_copy))

    # Winners of the old split put back by hand are refused too, not scored on the new test split.
    shutil.copytree(kept, layout.winners)
    line = error_line(run_cli("evaluate", run_copy))
    assert "another split" in line and str(layout.winners_summary) in line
    assert not layout.metrics.exists()


def test_retrain_refuses_a_search_result_of_another_split(run_copy):
    layout = RunLayout(run_copy)
    rows = layout.split.read_text().splitlines()
    layout.split.write_text("\n".join([rows[0], *reversed(rows[1:])]) + "\n")  # same images, other file
    line = error_line(run_cli("retrain", run_copy, "--top-k", 1))
    assert str(layout.best) in line and "another split" in line
    assert load_config(run_copy).class_names  # nothing else was touched
