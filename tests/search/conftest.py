"""A tiny searched-and-retrained run shared by the retrain, evaluate, export and predict tests."""

import shutil

import pytest

from cxr_tuner.search.engine.config import load_config, new_config
from cxr_tuner.search.evaluation.evaluate import evaluate
from cxr_tuner.search.delivery.export import export_model
from cxr_tuner.search.final.retrain import retrain
from cxr_tuner.search.run import run_search


def _quiet(line):
    pass


@pytest.fixture(scope="session")
def retrained_run(tmp_path_factory, demo_data):
    """Run dir after a 2-epoch vanilla_cnn search at 32 px and a retrain of the top 2, 2 seeds each."""
    run_dir = tmp_path_factory.mktemp("winners") / "run"
    config = new_config(str(run_dir), str(demo_data), backbones=("vanilla_cnn",), image_size=32,
                        weights="none", max_epochs=2, factor=2, batch_size=16, seed=1)
    run_search(config, log=_quiet)
    retrain(load_config(run_dir), top_k=2, seeds=2, max_epochs=3, log=_quiet)
    return run_dir


@pytest.fixture(scope="session")
def evaluated_run(retrained_run):
    """The retrained run after `evaluate` on its test split."""
    evaluate(load_config(retrained_run), log=_quiet)
    return retrained_run


@pytest.fixture(scope="session")
def exported_run(evaluated_run):
    """The evaluated run after `export` in every format."""
    export_model(load_config(evaluated_run), log=_quiet)
    return evaluated_run


@pytest.fixture
def run_copy(retrained_run, tmp_path):
    """A private copy of the retrained run, for tests that rewrite it."""
    copy = tmp_path / "run"
    shutil.copytree(retrained_run, copy)
    return copy
