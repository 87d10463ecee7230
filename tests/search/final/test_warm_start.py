"""Winners retrained from the search's weights (the default) or from a fresh build (``--retrain-from scratch``)."""

import json
import shutil

import numpy as np
import pytest

from cxr_tuner.data.errors import UserError
from cxr_tuner.hypermodels import variants
from cxr_tuner.hypermodels.classifier import OBJECTIVE
from cxr_tuner.hypermodels.cutting import ActivationClassifier
from cxr_tuner.search.engine import dataset
from cxr_tuner.search.engine.config import load_config, new_config
from cxr_tuner.search.engine.layout import RunLayout
from cxr_tuner.search.final import retrain as retraining
from cxr_tuner.search.run import run_search
from cxr_tuner.search.tuning.activations import trial_hypermodel
from cxr_tuner.search.tuning.tuner import fresh_keras_state
from tests.search.tuning.test_activations import _weights_file


def _search_scores(run_dir) -> dict:
    """The search's best validation loss of each top configuration, by trial id."""
    return {e["trial_id"]: e[OBJECTIVE] for e in json.loads(RunLayout(run_dir).best.read_text())["top"]}


def _summary(run_dir) -> dict:
    return json.loads(RunLayout(run_dir).winners_summary.read_text())


@pytest.fixture(scope="module")
def warm_run(retrained_run, tmp_path_factory):
    """The shared run (a from-scratch backbone, trained on images) retrained from the search: top 2, 2 seeds."""
    run_dir = tmp_path_factory.mktemp("warm_images") / "run"
    shutil.copytree(retrained_run, run_dir)
    retraining.retrain(load_config(run_dir), top_k=2, seeds=2, max_epochs=3, log=lambda line: None, from_="search")
    return run_dir


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory, demo_data):
    """A 2-epoch search of MobileNet-0.25 at 32 px from a weights file (a frozen part, cached activations)."""
    root = tmp_path_factory.mktemp("warm")
    config = new_config(str(root / "run"), str(demo_data), backbones=("mobilenet_025",), image_size=32,
                        weights=_weights_file(root / "w.weights.h5", 0), max_epochs=2, factor=2, batch_size=16,
                        seed=3)
    run_search(config, log=lambda line: None)
    return root / "run"


def test_each_seed_of_each_winner_starts_at_the_searchs_best_validation_loss(warm_run, retrained_run):
    summary, searched = _summary(warm_run), _search_scores(warm_run)
    assert _summary(retrained_run)["from"] == "scratch"  # the default
    assert summary["from"] == "search"
    for winner in summary["winners"]:
        assert winner["from"] == "search"
        for score in winner["seeds"]:
            assert score["start_" + OBJECTIVE] == pytest.approx(searched[winner["trial_id"]], rel=1e-5, abs=1e-6)
            assert score[OBJECTIVE] <= score["start_" + OBJECTIVE]  # an epoch is kept only when it beat the start


def test_a_variant_with_one_block_more_starts_from_the_searchs_weights_by_layer_name(pretrained_run):
    """The deeper model takes the searched layers by name; its extra block keeps its pretrained values, so it
    computes what the searched model did: the same validation loss before any new epoch."""
    config = load_config(pretrained_run)
    data = dataset.prepare(config, progress=False)
    hypermodel = trial_hypermodel(data, progress=False)[0]
    trial_id, loss = next((t, s) for t, s in _search_scores(pretrained_run).items()
                          if variants.ONE_BLOCK_MORE in variants.candidates(
                              retraining.trial_hyperparameters(config, t), config.weights,
                              specs=config.backbone_specs))
    hp = variants.ONE_BLOCK_MORE.hyperparameters(retraining.trial_hyperparameters(config, trial_id))
    weights = retraining.SearchWeights(config, hypermodel)(trial_id)
    fresh_keras_state(0)
    model = hypermodel.build(hp)
    assert set(weights) < {layer.name for layer in model.layers if layer.weights}  # one block more
    retraining.start_from(model, weights)
    assert hypermodel.evaluate_validation(hp, model)[OBJECTIVE] == pytest.approx(loss, rel=1e-4)


def test_retrain_starts_from_the_searchs_weights_and_scratch_from_a_fresh_build(pretrained_run, tmp_path,
                                                                                monkeypatch):
    """The weights each training begins with, recorded as its fit starts.

    From the search: every variant tried and the seed. From scratch: one fit, without the variant choice (every
    fit, variant or seed, takes its start from the same ``start`` argument of ``_fit``), which cost most of the time."""
    run_dir = tmp_path / "run"
    shutil.copytree(pretrained_run, run_dir)
    config = load_config(run_dir)
    started = []
    original = ActivationClassifier.fit
    monkeypatch.setattr(ActivationClassifier, "fit",
                        lambda self, hp, model, *a, **kw: started.append((hp, model.get_weights()))
                        or original(self, hp, model, *a, **kw))
    hypermodel = trial_hypermodel(dataset.prepare(config, progress=False), progress=False)[0]
    for from_ in ("search", "scratch"):
        started.clear()
        lines = []
        summary = retraining.retrain(config, top_k=1, seeds=1, max_epochs=1, log=lines.append, from_=from_,
                                     choose_variant=from_ == "search")
        winner = summary["winners"][0]
        assert summary["from"] == winner["from"] == from_ and started  # the variants tried, or the one fit
        for hp, weights in started:  # every fit of the rank-1 configuration, seed config.seed
            if from_ == "search":
                expected = _loaded(config, hypermodel, winner["trial_id"], hp)
            else:
                fresh_keras_state(config.seed)
                expected = hypermodel.build(hp).get_weights()
            assert len(weights) == len(expected)
            assert all(np.array_equal(a, b) for a, b in zip(weights, expected))
        if from_ == "search":
            assert winner["seeds"][0]["start_" + OBJECTIVE] == pytest.approx(
                _search_scores(run_dir)[winner["trial_id"]], rel=1e-4)
            assert any("epoch 0: the search's weights" in line for line in lines)
        else:
            assert "start_" + OBJECTIVE not in winner["seeds"][0]


def _loaded(config, hypermodel, trial_id, hp) -> list:
    """``hp``'s model holding the trial's checkpoint by layer name, built as a fresh build is."""
    weights = retraining.SearchWeights(config, hypermodel)(trial_id)
    fresh_keras_state(config.seed)
    model = hypermodel.build(hp)
    retraining.start_from(model, weights)
    return model.get_weights()


def test_a_missing_checkpoint_or_an_unknown_start_is_one_clear_error(run_copy):
    config = load_config(run_copy)
    trial_id = next(iter(_search_scores(run_copy)))
    RunLayout(run_copy).trial_checkpoint(trial_id).unlink()
    with pytest.raises(UserError, match="--retrain-from scratch"):
        retraining.retrain(config, top_k=1, seeds=1, max_epochs=1, log=lambda line: None, from_="search")
    with pytest.raises(UserError, match="choose from search, scratch"):
        retraining.retrain(config, from_="imagenet", log=lambda line: None)


def test_the_refit_of_a_warm_started_member_replays_only_its_epochs_after_the_searchs_weights(
        warm_run, tmp_path, monkeypatch):
    from cxr_tuner.data import pipeline
    from cxr_tuner.search.final.assemble import assemble

    run_dir = tmp_path / "run"
    shutil.copytree(warm_run, run_dir)
    config = load_config(run_dir)
    fit = set(dataset.prepare(config, progress=False).indices(dataset.FIT).tolist())
    seen, make = [], pipeline.make_dataset
    monkeypatch.setattr(pipeline, "make_dataset", lambda *a, rows=None, **k: seen.append(rows) or make(*a, rows=rows, **k))
    lines = []
    assemble(config, ensemble=2, point="off", refit=True, log=lines.append)
    winners = _summary(run_dir)["winners"]
    # Once on all of train+val from the search's weights; a member whose best was those weights is kept.
    assert [set(rows.tolist()) for rows in seen] == [fit for w in winners if w["best_epoch"]]
    assert [("from the search's weights" in line, "kept as retrained" in line)
            for line in lines if line.startswith("refit ")] == [(w["best_epoch"] > 0, not w["best_epoch"])
                                                               for w in winners]


@pytest.mark.parametrize("from_", ["search", "scratch"])
def test_with_augment_the_whole_image_model_starts_from_the_searchs_weights(pretrained_run, tmp_path, from_):
    """The search trained above the freeze boundary on cached activations; the image model takes those layers by
    name, so on the (unaugmented) validation films it starts at the search's loss. From scratch: no start."""
    run_dir = tmp_path / "run"
    shutil.copytree(pretrained_run, run_dir)
    summary = retraining.retrain(load_config(run_dir), top_k=1, seeds=1, max_epochs=1, augment=True,
                                 choose_variant=False, log=lambda line: None, from_=from_)
    winner = summary["winners"][0]
    assert summary["augment"] and winner["from"] == from_
    assert (RunLayout(run_dir).winners / winner["dir"] / "validation.npz").is_file()
    if from_ == "scratch":
        assert "start_" + OBJECTIVE not in winner["seeds"][0]
        return
    assert winner["seeds"][0]["start_" + OBJECTIVE] == pytest.approx(_search_scores(run_dir)[winner["trial_id"]],
                                                                      rel=1e-4)
