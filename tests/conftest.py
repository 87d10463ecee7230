"""Shared fixtures: a seeded, session-scoped synthetic dataset."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow is imported

import pytest  # noqa: E402

from data import synthetic  # noqa: E402


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """A small 3-class phantom dataset (folder per class + metadata.csv), 30 per class."""
    root = tmp_path_factory.mktemp("demo") / "data"
    return synthetic.write_demo_dataset(root, n_per_class=30, size=64, seed=0)
