"""Shared fixtures and helpers: a seeded, session-scoped synthetic dataset, the CLI runner."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow is imported

import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from cxr_tuner.data import synthetic  # noqa: E402
from cxr_tuner.search.engine.layout import RunLayout  # noqa: E402

# The fastest real search: one small from-scratch backbone, 32 px, one epoch per model.
FAST_SEARCH = ("--backbones", "vanilla_cnn", "--weights", "none", "--image-size", "32",
               "--max-epochs", "1", "--factor", "2", "--no-retrain")

# Which tests share a worker (setup.cfg runs xdist with --dist loadgroup). A module- or
# session-scoped fixture is built once per worker that runs a test using it: spread over both
# workers, the searched-and-retrained run of tests/search/conftest.py (~45 s), the budgeted job
# (~45 s) and the bfloat16 run (~25 s) were each built twice. So every test that uses the
# shared run goes to one worker (group "winners"), and every test that uses a module-scoped
# fixture goes with the rest of its module. xdist hands out the groups with the most tests
# first and then the ungrouped tests one by one, which keeps the two workers finishing together.
# A test module may also name its own group (pytestmark = pytest.mark.xdist_group(...)).
#
# xdist 3.8 groups by a "@group" suffix it writes into each item's node id, which pytest 9
# ignores (the id lives elsewhere now): every group was silently ignored. So the workers write
# each test's group to a file the controller's scheduler reads (both hooks below are xdist's).
SHARED_RUN = "retrained_run"  # evaluated_run, exported_run and run_copy are built from it
_GROUPS_FILE = "xdist_groups_file"
_GROUPS_KEY = pytest.StashKey[str]()


def _group(item) -> str | None:
    marker = item.get_closest_marker("xdist_group")
    if marker:
        return str(marker.args[0] if marker.args else marker.kwargs.get("name", "default"))
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return None
    if SHARED_RUN in info.names_closure:
        return "winners"
    if any(defs and defs[-1].scope in ("class", "module", "package") for defs in info.name2fixturedefs.values()):
        return item.nodeid.split("::")[0]
    return None


def pytest_collection_modifyitems(config, items):
    path = getattr(config, "workerinput", {}).get(_GROUPS_FILE)
    if path:  # an xdist worker: both write the same collection's groups, each to its own file
        groups = {item.nodeid: group for item in items if (group := _group(item))}
        mine, part = Path(f"{path}.{config.workerinput['workerid']}"), Path(f"{path}-part.{config.workerinput['workerid']}")
        part.write_text(json.dumps(groups))
        part.replace(mine)  # whole or not there


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    if _GROUPS_KEY not in node.config.stash:  # one folder for all the workers
        node.config.stash[_GROUPS_KEY] = tempfile.mkdtemp(prefix="xdist-groups-")
    node.workerinput[_GROUPS_FILE] = str(Path(node.config.stash[_GROUPS_KEY]) / "groups")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class FileGroupScheduling(LoadGroupScheduling):
        """loadgroup with the groups the workers wrote (tests without one are scheduled one by one)."""

        groups = None

        def _split_scope(self, nodeid):
            if self.groups is None:  # read once the workers have collected, before the first scope
                found = sorted(Path(config.stash[_GROUPS_KEY]).glob("groups.gw*"))
                self.groups = json.loads(found[0].read_text()) if found else {}
            return self.groups.get(nodeid) or super()._split_scope(nodeid)

    return FileGroupScheduling(config, log)


def pytest_unconfigure(config):
    if _GROUPS_KEY in config.stash:
        shutil.rmtree(config.stash[_GROUPS_KEY], ignore_errors=True)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """A small 3-class phantom dataset (folder per class + metadata.csv), 30 per class."""
    root = tmp_path_factory.mktemp("demo") / "data"
    return synthetic.write_demo_dataset(root, n_per_class=30, size=64, seed=0)


def run_cli(*args):
    """Runs the command line in-process, as a user would type it (arguments made strings)."""
    from cxr_tuner.cli import cli

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


_PLAIN_KERAS = (
    "import json, sys\n"
    "sys.modules['cxr_tuner'] = None  # this project cannot be imported here, whatever is installed\n"
    "import keras, numpy as np\n"
    "files, images = sys.argv[1:-1], np.load(sys.argv[-1])\n"
    "out = {}\n"
    "for path in files:\n"
    "    model = keras.saving.load_model(path, safe_mode=True)\n"
    "    out[path] = {'name': model.name, 'output': np.asarray(model(images)).tolist()}\n"
    "project = [m for m, v in sys.modules.items() if v is not None and m.split('.')[0] in ('cxr_tuner', 'hypermodels', 'search', 'data', 'cli')]\n"
    "assert not project, project\n"
    "print(json.dumps(out))\n")


def plain_keras_outputs(model_files, images, cwd) -> dict:
    """``{file: {name, output}}`` of ``images`` through each file, loaded in a process that has only Keras.

    Whoever receives an exported model needs only Keras: safe mode, from an empty folder with
    an isolated path (``python -I``), and ``cxr_tuner`` blocked, so none of this project loads.
    """
    import numpy as np

    np.save(Path(cwd) / "images.npy", np.asarray(images, "uint8"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-I", "-c", _PLAIN_KERAS, *map(str, model_files), "images.npy"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def plain_keras_output(model_file, cwd, pixel: int = 0) -> dict:
    """``{name, output}`` of ``model_file`` on one uniform image, loaded in a process that has only Keras."""
    import keras

    size = keras.saving.load_model(model_file, compile=False).inputs[0].shape[1]
    images = [[[[pixel]] * size] * size]
    return plain_keras_outputs([model_file], images, cwd)[str(model_file)]


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
