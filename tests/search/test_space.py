"""The search space as a file: printed, read back, checked line by line, stored, searched and shown in HParams."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import keras_tuner
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from cxr_tuner.hypermodels import variants
from cxr_tuner.search.tuning.activations import searched_depths
from cxr_tuner.search.engine.config import load_config, new_config
from cxr_tuner.search.engine.layout import RunLayout
from tests.conftest import error_line, plain_keras_output, run_cli, saved_trials, tree_digest


def _printed(tmp_path, *flags):
    result = run_cli("space", *flags)
    assert result.exit_code == 0, result.output
    path = tmp_path / "space.toml"
    path.write_text(result.output)
    return path


@pytest.mark.parametrize("flags", [
    (),
    ("--data", "x"),
    ("--backbones", "vanilla_cnn", "--weights", "none", "--image-size", "48", "--factor", "2"),
], ids=["demo", "data", "scratch"])
def test_the_printed_default_space_read_back_is_the_same_search(tmp_path, flags):
    path = _printed(tmp_path, *flags)
    given = dict(zip(flags[::2], flags[1::2]))
    options = {k.lstrip("-").replace("-", "_"): v for k, v in given.items() if k != "--data"}
    options = {k: (tuple(v.split(",")) if k == "backbones" else int(v) if v.isdigit() else v)
               for k, v in options.items()}
    data = given.get("--data")
    plain = new_config("run", data, **options)
    assert new_config("run", data, space=path, **options) == plain  # the same settings and stored space
    assert new_config("run", data, space=path) == plain  # the file alone carries the flags' settings
    # The same stored space means the same declarations: the same seed samples the same trials.
    # One comment before every entry, so the file explains itself.
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.startswith("#") and not line.startswith("["):
            assert lines[i - 1].startswith("#"), line


def _space(tmp_path, text):
    path = tmp_path / "space.toml"
    path.write_text(text)
    return path


BAD = [
    ("[hyperparameter]\ndropout = 0.2\n", ["hyperparameter", "unknown table"]),
    ("[hyperparameters]\ndropuot = 0.2\n", ["hyperparameters.dropuot", "unknown hyperparameter", "dropout"]),
    ('[hyperparameters]\ndropout = "high"\n', ["hyperparameters.dropout", "expected a number", "a string"]),
    ("[hyperparameters]\nhead_depth = 1.5\n", ["hyperparameters.head_depth", "a whole number"]),
    ("[hyperparameters]\nlearning_rate = {min = 1e-2, max = 1e-4}\n", ["learning_rate", "min 0.01 is above max 0.0001"]),
    ("[hyperparameters]\nlearning_rate = {min = 0.0, max = 1e-2, sampling = \"log\"}\n", ["learning_rate", "above 0"]),
    ("[hyperparameters]\ndropout = {min = 0.1, max = 0.5, sampling = \"cubic\"}\n", ["dropout.sampling", "linear, log"]),
    ("[hyperparameters]\ndropout = {min = 0.1, maximum = 0.5}\n", ["dropout.maximum", "unknown key"]),
    ("[hyperparameters]\ndropout = 1.0\n", ["hyperparameters.dropout", "0 <= dropout < 1"]),
    ("[hyperparameters]\nhead_units = []\n", ["hyperparameters.head_units", "empty"]),
    ("[hyperparameters]\nhead_units_3 = 64\n", ["head_units_3", "at most 3 layer"]),
    ("[hyperparameters]\nunfreeze_depth = {min = 0, max = 5}\n", ["unfreeze_depth", "mobilenet_025", "3 cut point"]),
    ('[hyperparameters]\nbackbone = ["mobilenet_025", "resnet5O"]\n', ["resnet5O", "Known backbones"]),
    ("[run]\nimage_size = 8\n", ["run.image_size", "outside 16..1024"]),
    ("[run]\nepochs = 8\n", ["run.epochs", "max_epochs"]),
    ('[retrain]\nvariants = ["lr_decay", "warm_restarts"]\n', ["retrain.variants", "one_block_more"]),
    ("[retrain]\ntop_k = 0\n", ["retrain.top_k", "at least 1"]),
    ("[hyperparameters\ndropout = 0.2\n", ["not valid TOML", "line 1"]),
    ('[backbones.mine]\nfile = "mine.keras"\n', ["backbones.mine", "preprocess is missing"]),
]


@pytest.mark.parametrize("text, phrases", BAD, ids=[b[1][0] for b in BAD])
def test_each_problem_in_a_space_file_is_one_line_and_nothing_is_written(tmp_path, text, phrases):
    run_dir = tmp_path / "run"
    result = run_cli("search", "--run-dir", run_dir, "--space", _space(tmp_path, text))
    error_line(result, *phrases)
    assert not run_dir.exists()


def test_a_flag_that_disagrees_with_the_space_file_is_refused(tmp_path):
    path = _space(tmp_path, "[run]\nimage_size = 64\n[hyperparameters]\nbackbone = \"vanilla_cnn\"\n")
    error_line(run_cli("search", "--run-dir", tmp_path / "run", "--space", path, "--image-size", "32"),
               "--image-size 32", "run.image_size = 64")
    error_line(run_cli("search", "--run-dir", tmp_path / "run", "--space", path, "--backbones", "mobilenet_025"),
               "--backbones mobilenet_025", "hyperparameters.backbone")
    assert not (tmp_path / "run").exists()
    # Agreeing flags are fine.
    assert new_config(str(tmp_path / "run"), space=path, image_size=64).image_size == 64


def test_a_resume_with_another_space_is_refused_in_one_line(tmp_path, demo_data):
    run_dir = tmp_path / "run"
    first = _space(tmp_path, "[hyperparameters]\ndropout = 0.2\n")
    new_config(str(run_dir), str(demo_data), space=first, backbones=("mobilenet_025",)).save()
    before = tree_digest(run_dir)
    other = tmp_path / "other.toml"
    other.write_text("[hyperparameters]\ndropout = {min = 0.0, max = 0.3, step = 0.1}\n")
    flags = ("--data", demo_data, "--run-dir", run_dir, "--backbones", "mobilenet_025")
    line = error_line(run_cli("search", *flags, "--space", other),
                      "search space", "hyperparameters.dropout", "--overwrite")
    assert '"fixed"=0.2' in line
    # Without the file it is another space too (the default one).
    error_line(run_cli("search", *flags), "search space")
    assert tree_digest(run_dir) == before
    stored = json.loads(RunLayout(run_dir).config.read_text())["space"]
    assert stored["hyperparameters"]["dropout"] == {"fixed": 0.2}
    assert load_config(run_dir).search_space()["dropout"].value == 0.2


def test_a_run_saved_before_spaces_existed_resumes_with_the_default_space(tmp_path):
    config = new_config(str(tmp_path / "run"))
    config.save()
    raw = json.loads(config.layout.config.read_text())
    del raw["space"]
    config.layout.config.write_text(json.dumps(raw))
    loaded = load_config(config.run_dir)
    assert loaded.space == config.space
    config.check_resumable(loaded)


def test_retrain_variants_and_the_cached_depths_follow_the_space(tmp_path):
    path = _space(tmp_path, '[hyperparameters]\nbackbone = "mobilenet_025"\nunfreeze_depth = 0\n'
                            '[retrain]\nvariants = ["lr_decay"]\ntop_k = 2\n')
    config = new_config(str(tmp_path / "run"), space=path)
    assert config.retrain_choices["top_k"] == 2
    hp = keras_tuner.HyperParameters()
    hp.values.update(backbone="mobilenet_025", unfreeze_depth=0)
    allowed = config.retrain_choices["variants"]
    assert variants.candidates(hp, "imagenet", allowed, specs=config.backbone_specs) == [variants.LR_DECAY]
    assert variants.first(allowed) == variants.LR_DECAY
    # Depth 0 is searched; with one_block_more left out no retrain asks for depth 1 either.
    assert searched_depths(config, "mobilenet_025") == 1
    wider = new_config(str(tmp_path / "run"), space=_space(tmp_path, "[hyperparameters]\nunfreeze_depth = [0, 1]\n"))
    assert searched_depths(wider, "mobilenet_025") == 3  # 0 and 1, and 2 for one block more


def test_whole_numbers_in_a_real_valued_entry_are_read_as_real_numbers(tmp_path):
    config = new_config(str(tmp_path / "run"), space=_space(tmp_path, "[hyperparameters]\ndropout = [0, 0.25]\n"))
    hp = keras_tuner.HyperParameters()
    assert config.search_space().declare(hp, "dropout") == 0.0  # one Choice of floats (KerasTuner refuses a mix)
    assert hp.get_config()["space"][0]["config"]["values"] == [0.0, 0.25]


def _own_model(path):
    """A tiny pretrained-looking backbone of one's own: a stem and two residual blocks, saved as .keras."""
    import keras

    inputs = keras.Input((None, None, 3), name="rgb")
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="stem_conv")(inputs)
    x = keras.layers.Activation("relu", name="stem_relu")(x)
    for i in (1, 2):
        y = keras.layers.Conv2D(8, 3, padding="same", name=f"block{i}_conv")(x)
        x = keras.layers.Add(name=f"block{i}_add")([x, y])
        x = keras.layers.Activation("relu", name=f"block{i}_out")(x)
    x = keras.layers.Conv2D(16, 1, name="top_conv")(x)
    keras.Model(inputs, keras.layers.Activation("relu", name="top_relu")(x)).save(path)
    return path


OWN_SPACE = """
[run]
image_size = 32
max_epochs = 2

[hyperparameters]
backbone = "mine"
unfreeze_depth = [0, 1]
head_depth = [0, 1]
head_units = [32]
dropout = 0.3
learning_rate = {min = 1e-3, max = 3e-3, sampling = "log"}

[retrain]
top_k = 1
variants = ["as_searched"]

[backbones.mine]
file = "mine.keras"
preprocess = "tf"
cuts = ["block2_out", "block1_out"]
"""


def test_two_runs_in_one_process_each_see_only_their_own_backbones(tmp_path):
    """Loading one run's config changes nothing another run's backbones answer (a value per run)."""
    from cxr_tuner.data.errors import UserError

    for run, preprocess, cuts in (("a", "tf", '["block2_out", "block1_out"]'), ("b", "torch", '["block1_out"]')):
        folder = tmp_path / run
        folder.mkdir()
        _own_model(folder / "mine.keras")
        _own_model(folder / f"only_{run}.keras")
        text = (f'[run]\nimage_size = 32\n[hyperparameters]\nbackbone = ["mine", "only_{run}"]\n'
                f'[backbones.mine]\nfile = "mine.keras"\npreprocess = "{preprocess}"\ncuts = {cuts}\n'
                f'[backbones.only_{run}]\nfile = "only_{run}.keras"\npreprocess = "tf"\ncuts = ["block1_out"]\n')
        new_config(str(folder / "run"), space=_space(folder, text)).save()
    configs = {run: load_config(tmp_path / run / "run") for run in ("a", "b")}
    a, b = configs["a"].backbone_specs, configs["b"].backbone_specs
    assert (a.get("mine").preprocess, a.get("mine").unfreeze_points) == ("tf", ("block2_out", "block1_out"))
    assert (b.get("mine").preprocess, b.get("mine").unfreeze_points) == ("torch", ("block1_out",))
    assert a.get("mine").file == str((tmp_path / "a" / "mine.keras").resolve())
    assert a.get("only_a").name == "only_a" and b.get("only_b").name == "only_b"
    for specs, other in ((a, "only_b"), (b, "only_a")):
        with pytest.raises(UserError, match=f"Unknown backbone '{other}'"):
            specs.get(other)
    assert load_config(tmp_path / "a" / "run").backbone_specs == a  # loading again: the same value


@pytest.fixture(scope="module")
def own_run(tmp_path_factory, demo_data):
    """A whole job (search to export) on a backbone of one's own, in a space that fixes and narrows entries."""
    folder = tmp_path_factory.mktemp("own")
    _own_model(folder / "mine.keras")
    run_dir = folder / "run"
    result = run_cli("search", "--data", demo_data, "--run-dir", run_dir, "--space", _space(folder, OWN_SPACE),
                     "--tuner", "random", "--max-trials", 2)
    assert result.exit_code == 0 and result.exception is None, result.output
    return folder, run_dir, result.output


def test_a_search_stays_inside_its_space_file_and_hparams_shows_exactly_that_space(own_run):
    _, run_dir, _ = own_run
    trials = saved_trials(run_dir)
    assert len(trials) == 2
    for trial in trials.values():
        values = trial["hyperparameters"]["values"]
        assert values["backbone"] == "mine" and values["dropout"] == 0.3 and values["unfreeze_depth"] in (0, 1)
        assert values["head_depth"] in (0, 1) and values.get("head_units_0", 32) == 32
        assert 1e-3 <= values["learning_rate"] <= 3e-3
    acc = event_accumulator.EventAccumulator(str(RunLayout(run_dir).tensorboard), size_guidance={"tensors": 0})
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/experiment"]
    infos = {h.display_name: h for h in plugin_data_pb2.HParamsPluginData.FromString(content).experiment.hparam_infos}
    assert {"backbone", "unfreeze_depth", "head_depth", "head_units_0", "dropout", "learning_rate"} <= set(infos)
    assert [v.string_value for v in infos["backbone"].domain_discrete.values] == ["mine"]
    assert [v.number_value for v in infos["dropout"].domain_discrete.values] == [0.3]
    assert [v.number_value for v in infos["head_units_0"].domain_discrete.values] == [32]
    assert [v.number_value for v in infos["unfreeze_depth"].domain_discrete.values] == [0, 1]
    interval = infos["learning_rate"].domain_interval
    assert math.isclose(interval.min_value, 1e-3) and math.isclose(interval.max_value, 3e-3)


def test_a_backbone_of_ones_own_goes_from_the_space_file_to_an_export_plain_keras_loads(own_run, demo_data):
    import keras
    import numpy as np

    folder, run_dir, output = own_run
    assert "pretrained: mine weights from its own file" in output  # where the backbone starts: the file
    layout = RunLayout(run_dir)
    assert list(layout.activations.iterdir())  # pretrained: its frozen part was cached
    stored = load_config(run_dir).space["backbones"]["mine"]
    assert stored["file"] == str((folder / "mine.keras").resolve()) and len(stored["sha256"]) == 64
    got = plain_keras_output(layout.export / "model.keras", folder, pixel=100)
    exported = keras.saving.load_model(layout.export / "model.keras", safe_mode=True)
    expected = np.asarray(exported(np.full((1, 32, 32, 1), 100, "uint8")))
    np.testing.assert_allclose(got["output"], expected, atol=1e-5)
    # A changed backbone file is not what the run's caches and trials were made from: refused in one
    # line where models are built from it (a retrain, a resume), losing nothing; what reads saved
    # models (evaluate, predict) goes on.
    winners = tree_digest(layout.winners)
    _own_model(folder / "mine.keras")
    error_line(run_cli("retrain", run_dir), "mine.keras changed since this run started")
    error_line(run_cli("search", "--data", demo_data, "--run-dir", run_dir, "--space", folder / "space.toml",
                       "--tuner", "random", "--max-trials", 2), "search space", "backbones.mine")
    assert tree_digest(layout.winners) == winners
    film = next(Path(demo_data).rglob("*.png"))
    predicted = run_cli("predict", layout.export / "model.keras", film)
    assert predicted.exit_code == 0, predicted.output


def test_the_space_a_run_searched_prints_as_a_file_that_searches_it_again(tmp_path):
    path = _space(tmp_path, '[run]\nimage_size = 48\n[hyperparameters]\nbackbone = "vanilla_cnn"\n'
                            "dropout = 0.1\nhead_units_0 = [32, 64]\n")
    first = new_config(str(tmp_path / "run"), weights="none", space=path)
    first.save()
    printed = run_cli("space", "--run-dir", tmp_path / "run")
    assert printed.exit_code == 0, printed.output
    again = tmp_path / "again.toml"
    again.write_text(printed.output)
    assert new_config(str(tmp_path / "run"), space=again) == first
    error_line(run_cli("space", "--run-dir", tmp_path / "run", "--image-size", 64), "drop --image-size")


# `cxr-tuner space` as a user runs it, in a process of its own: which of Keras's modules it loaded.
_AS_THE_COMMAND = (
    "import runpy, sys\n"
    "sys.argv = ['cxr-tuner', *sys.argv[1:]]\n"
    "try:\n"
    "    runpy.run_module('cxr_tuner', run_name='__main__')\n"
    "except SystemExit as done:\n"
    "    assert not done.code, done.code\n"
    "print('loaded:', *sorted(m for m in ('tensorflow', 'keras', 'keras_tuner') if m in sys.modules), file=sys.stderr)\n"
)


def _space_command(*flags):
    """stdout, the heavy modules it loaded and anything else on stderr of `python -m cxr_tuner space FLAGS`."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", _AS_THE_COMMAND, "space", *map(str, flags)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    *other, loaded = done.stderr.splitlines()
    return done.stdout, loaded.split()[1:], other


@pytest.mark.parametrize("case", ["demo", "flags", "space file", "run dir"])
def test_space_prints_the_built_in_backbones_facts_without_loading_tensorflow(tmp_path, case):
    file = _space(tmp_path, '[run]\nimage_size = 64\n[hyperparameters]\nbackbone = ["mobilenet_025", "resnet50"]\n'
                            "dropout = 0.3\nhead_units_0 = [32, 64]\n")
    new_config(str(tmp_path / "run"), space=file).save()
    flags = {"demo": (), "flags": ("--data", "x", "--backbones", "vanilla_cnn,densenet121", "--image-size", "96"),
             "space file": ("--space", file), "run dir": ("--run-dir", tmp_path / "run")}[case]
    printed, loaded, other = _space_command(*flags)
    assert loaded == [] and other == [], (loaded, other)
    assert printed == run_cli("space", *flags).output  # the same text as where Keras is loaded
    assert "unfreeze_depth = {min = 0, max = " in printed and "[retrain]" in printed


def test_space_asks_keras_silently_for_a_keras_application_backbone():
    printed, loaded, other = _space_command("--backbones", "vanilla_cnn,keras:MobileNetV3Small")
    assert loaded == ["keras", "keras_tuner", "tensorflow"] and other == []  # TensorFlow's start-up lines hidden
    assert "(keras:MobileNetV3Small: 3)" in printed
    assert printed == run_cli("space", "--backbones", "vanilla_cnn,keras:MobileNetV3Small").output
