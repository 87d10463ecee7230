"""Shared fixtures and helpers: a seeded, session-scoped synthetic dataset, the CLI runner."""

import hashlib
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow is imported

import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from data import synthetic  # noqa: E402
from search.layout import RunLayout  # noqa: E402

# The fastest real search: one small from-scratch backbone, 32 px, one epoch per model.
FAST_SEARCH = ("--backbones", "vanilla_cnn", "--weights", "none", "--image-size", "32",
               "--max-epochs", "1", "--factor", "2", "--no-retrain")


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """A small 3-class phantom dataset (folder per class + metadata.csv), 30 per class."""
    root = tmp_path_factory.mktemp("demo") / "data"
    return synthetic.write_demo_dataset(root, n_per_class=30, size=64, seed=0)


def run_cli(*args):
    """Runs the command line in-process, as a user would type it (arguments made strings)."""
    from cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def error_line(result, *phrases) -> str:
    """Checks a clean failure (one ``Error:`` line, exit 1, no crash) and returns that line."""
    assert result.exit_code == 1, result.output
    # CliRunner keeps an uncaught exception in result.exception (the output has no traceback).
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.output
    for phrase in phrases:
        assert phrase in errors[0], errors[0]
    return errors[0]


def phantom_folders(root: Path, n_per_class: int = 12) -> Path:
    """A folder-per-class set of 64-px phantoms, each image its own group (no CSV)."""
    synthetic.write_demo_dataset(root, n_per_class=n_per_class, size=64, seed=5)
    for name in ("metadata.csv", "synthetic.json", "lesion_masks.npz"):
        (root / name).unlink()
    return root


def tree_digest(folder: Path) -> dict:
    """sha256 of every file under ``folder``, to show a failed command changed nothing."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def saved_trials(run_dir) -> dict:
    """trial id -> trial.json of every trial KerasTuner has written whole so far."""
    found = {}
    for path in RunLayout(run_dir).tuner.glob("trial_*/trial.json"):
        try:
            trial = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being written right now
        found[trial["trial_id"]] = trial
    return found
