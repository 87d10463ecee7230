"""A tiny end-to-end search: TensorBoard HParams per trial, resume, best trials."""

import contextlib
import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from cxr_tuner.hypermodels.classifier import OBJECTIVE, XrayClassifier
from cxr_tuner.search.engine.config import new_config
from cxr_tuner.search.engine.layout import RunLayout
from cxr_tuner.search.run import run_search
from cxr_tuner.search.tuning import hparams
from cxr_tuner.search.tuning.tuner import XrayHyperband


def _config(run_dir, data, **changes):
    settings = dict(backbones=("vanilla_cnn",), image_size=32, max_epochs=2, factor=2,
                    batch_size=16, seed=3)
    settings.update(changes)
    return new_config(str(run_dir), str(data), weights="none", **settings)


@contextlib.contextmanager
def _counting_builds():
    """Counts the image models built (every trial's, and KerasTuner's first for the space)."""
    builds, build = [], XrayClassifier.build
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(XrayClassifier, "build", lambda self, hp: builds.append(1) or build(self, hp))
        yield builds


@pytest.fixture(scope="module")
def finished(tmp_path_factory, demo_data):
    run_dir = tmp_path_factory.mktemp("run") / "r"
    with _counting_builds() as builds:
        best = run_search(_config(run_dir, demo_data), log=lambda line: None)
    return run_dir, best, len(builds)


@pytest.fixture(scope="module")
def finished_run(finished):
    return finished[:2]


def _session_hparams(trial_dir: Path, as_named: bool = True) -> dict:
    """HParams of one TensorBoard session, read back with TensorBoard's own reader, by hyperparameter name
    (``as_named`` False: by their names in HParams, ``1_backbone`` ...)."""
    acc = event_accumulator.EventAccumulator(str(trial_dir), size_guidance={"tensors": 0})
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    values = {}
    for name, value in info.hparams.items():
        kind = value.WhichOneof("kind")
        values[hparams.hyperparameter(name) if as_named else name] = getattr(value, kind)
    return values


def _experiment(tensorboard_dir: Path):
    """The HParams experiment summary of a run, read back with TensorBoard's own reader."""
    acc = event_accumulator.EventAccumulator(str(tensorboard_dir), size_guidance={"tensors": 0})
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/experiment"]
    return plugin_data_pb2.HParamsPluginData.FromString(content).experiment


def test_every_trial_is_an_hparams_session_with_bracket_round_and_objective(finished_run):
    run_dir, best = finished_run
    trials = sorted(p.parent.name.replace("trial_", "") for p in RunLayout(run_dir).tuner.glob("trial_*/trial.json"))
    assert len(trials) == best["trials"] >= 2
    for trial_id in trials:
        values = _session_hparams(RunLayout(run_dir).tensorboard / trial_id)
        assert {"backbone", "learning_rate", "tuner/bracket", "tuner/round"} <= set(values)
        acc = event_accumulator.EventAccumulator(str(RunLayout(run_dir).tensorboard / trial_id))
        acc.Reload()
        assert OBJECTIVE in acc.Tags()["tensors"]


def test_experiment_summary_names_the_weighted_loss_metric(finished_run):
    run_dir, _ = finished_run
    experiment = _experiment(RunLayout(run_dir).tensorboard)
    assert OBJECTIVE in [m.name.tag for m in experiment.metric_infos]
    assert {"backbone", "learning_rate", "tuner/bracket"} <= {h.display_name for h in experiment.hparam_infos}


def test_hparams_names_put_the_searched_five_first_and_every_session_uses_the_experiments_names(finished_run):
    # TensorBoard sorts the experiment's hyperparameters by name and shows the first five
    # (tests/search/test_hparams_dashboard.py sees them in Chromium, unfreeze_depth among them).
    run_dir, _ = finished_run
    infos = _experiment(RunLayout(run_dir).tensorboard).hparam_infos
    ordered = [h.display_name for h in sorted(infos, key=lambda h: h.name)]
    # From scratch only: no unfreeze_depth in the space, so a head layer's units come fifth.
    assert ordered[:5] == ["backbone", "learning_rate", "dropout", "head_depth", "head_units_0"], ordered
    assert all(hparams.hyperparameter(h.name) == h.display_name for h in infos)
    for trial in RunLayout(run_dir).tuner.glob("trial_*/trial.json"):
        session = _session_hparams(RunLayout(run_dir).tensorboard / trial.parent.name.replace("trial_", ""), False)
        assert "1_backbone" in session and set(session) <= {h.name for h in infos}


def test_best_hyperparameters_file_ranks_on_the_weighted_loss(finished_run):
    run_dir, best = finished_run
    saved = json.loads(RunLayout(run_dir).best.read_text())
    assert saved == best
    assert saved["objective"] == {"name": OBJECTIVE, "direction": "min"}
    scores = [t[OBJECTIVE] for t in saved["top"]]
    assert scores == sorted(scores)
    assert saved["best"]["hyperparameters"]["backbone"] == "vanilla_cnn"
    assert saved["best_per_backbone"] == {"vanilla_cnn": saved["best"]}  # for the pretrained/scratch comparison


def test_run_directory_holds_config_split_and_skipped(finished_run):
    run_dir, _ = finished_run
    config = json.loads(RunLayout(run_dir).config.read_text())
    assert config["class_names"] == ["COVID", "Normal", "Viral_Pneumonia"]
    assert set(config["class_weights"]) == set(config["class_names"])
    counts = json.loads(RunLayout(run_dir).findings.read_text())["counts"]
    assert counts["used"] == counts["train"] + counts["val"] + counts["test"]
    assert RunLayout(run_dir).split.is_file() and RunLayout(run_dir).skipped.is_file()


def test_resuming_a_finished_run_adds_no_trials(finished_run, demo_data):
    run_dir, best = finished_run
    split_before = RunLayout(run_dir).split.read_text()
    again = run_search(_config(run_dir, demo_data), log=lambda line: None)
    assert again["trials"] == best["trials"]
    assert RunLayout(run_dir).split.read_text() == split_before


def test_same_seed_gives_same_split_and_trial_sequence(tmp_path, demo_data):
    # Seed 0, the default, on purpose: KerasTuner reads a 0 seed as "no seed".
    runs = []
    for name in ("a", "b"):
        config = _config(tmp_path / name, demo_data, tuner="random", max_trials=2, max_epochs=1,
                         seed=0)
        run_search(config, log=lambda line: None)
        trials = sorted(RunLayout(tmp_path / name).tuner.glob("trial_*/trial.json"))
        hps = [json.loads(t.read_text())["hyperparameters"]["values"] for t in trials]
        runs.append((RunLayout(tmp_path / name).split.read_text().replace(str(tmp_path / name), ""), hps))
    assert runs[0] == runs[1]


def test_promoted_trials_reuse_their_model_and_score_as_fresh_builds(finished, tmp_path, demo_data, monkeypatch):
    # A Hyperband promotion trains the model object of the round it continues (its
    # traced steps kept), restarted as a fresh build starts: every score is unchanged.
    def scores(run_dir):
        trials = [json.loads(t.read_text()) for t in sorted(RunLayout(run_dir).tuner.glob("trial_*/trial.json"))]
        return [t["score"] for t in trials], sum("tuner/trial_id" in t["hyperparameters"]["values"] for t in trials)

    run_dir, _, reused_builds = finished
    reused, promoted = scores(run_dir)
    monkeypatch.setattr(XrayHyperband, "MAX_KEPT", 0)
    with _counting_builds() as builds:
        run_search(_config(tmp_path / "fresh", demo_data), log=lambda line: None)
    fresh, _ = scores(tmp_path / "fresh")
    assert promoted >= 1 and len(builds) - reused_builds == promoted  # one build fewer per promotion
    assert reused == pytest.approx(fresh, rel=1e-5)
