"""Artifacts are written whole or not at all; a damaged one is one clear line, and nothing else is touched."""

import os

import pytest

from cxr_tuner.data import audit, cache, files, split
from cxr_tuner.data.manifest import Example
from cxr_tuner.search.engine.config import load_config
from cxr_tuner.search.engine.dataset import DataFindings
from cxr_tuner.search.engine.layout import RunLayout
from tests.conftest import error_line, run_cli, tree_digest


def _interrupted_replace(*args):
    raise OSError(28, "No space left on device")  # as if the process died between write and replace


@pytest.mark.parametrize("writer", ["config", "findings", "json", "split", "skipped", "audit"])
def test_an_interrupted_writer_leaves_the_old_content(writer, run_copy, monkeypatch):
    layout = RunLayout(run_copy)
    config = load_config(run_copy)
    examples = [Example("a.png", "COVID", "g")]
    write, target = {
        "config": (lambda: config.replace(seed=99).save(), layout.config),
        "findings": (lambda: DataFindings({"used": 1}, {}).save(layout), layout.findings),
        "json": (lambda: files.write_json(layout.best, {"new": True}), layout.best),  # best, winners, metrics, card
        "split": (lambda: split.save_split(layout.split, examples, ["train"]), layout.split),
        "skipped": (lambda: cache.write_skipped_csv(layout.skipped, []), layout.skipped),
        "audit": (lambda: audit.write_audit_csv(layout.audit, audit.audit(examples)), layout.audit),
    }[writer]
    before = target.read_bytes()
    monkeypatch.setattr(files.os, "replace", _interrupted_replace)
    with pytest.raises(Exception):
        write()
    assert target.read_bytes() == before
    assert not [p for p in os.listdir(target.parent) if p.endswith(".part")]  # no temporary file left


def _truncate(path):
    path.write_text(path.read_text()[: len(path.read_text()) // 2])


@pytest.mark.parametrize("damaged, command", [
    ("best", ["retrain", "{run}"]),
    ("config", ["evaluate", "{run}"]),
    ("winners_summary", ["evaluate", "{run}"]),
    ("oracle", ["search", "--data", "{data}", "--run-dir", "{run}", "--backbones", "vanilla_cnn", "--weights",
                "none", "--image-size", "32", "--max-epochs", "2", "--factor", "2", "--batch-size", "16",
                "--seed", "1", "--no-retrain"]),
])
def test_a_truncated_artifact_is_one_line_naming_it(damaged, command, run_copy, demo_data):
    layout = RunLayout(run_copy)
    path = getattr(layout, damaged)
    _truncate(path)
    before = tree_digest(run_copy)
    line = error_line(run_cli(*[part.format(run=run_copy, data=demo_data) for part in command]))
    assert str(path) in line and "damaged" in line
    assert any(remedy in line for remedy in ("--overwrite", "cxr-tuner"))
    assert tree_digest(run_copy) == before


def test_a_winner_with_missing_files_is_one_line(run_copy):
    winner = RunLayout(run_copy).best_winner()
    (winner / "model.keras").unlink()
    line = error_line(run_cli("export", run_copy))
    assert str(winner / "model.keras") in line and "retrain" in line
