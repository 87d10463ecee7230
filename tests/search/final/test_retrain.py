"""Retraining the search's winners: ranked on validation only, best epoch kept, re-runnable."""

import json

import keras
import keras_tuner
import numpy as np
import pytest

from cxr_tuner.data.errors import UserError
from cxr_tuner.hypermodels.classifier import OBJECTIVE
from cxr_tuner.hypermodels.registry import BUILT_IN
from cxr_tuner.search.engine import dataset
from cxr_tuner.search.engine.config import load_config
from cxr_tuner.search.engine.layout import RunLayout
from cxr_tuner.search.final.retrain import pick_variant, retrain, trial_hyperparameters


def _summary(run_dir):
    return json.loads((RunLayout(run_dir).winners_summary).read_text())


def test_winners_are_ranked_by_mean_validation_loss_with_spread_over_seeds(retrained_run):
    winners = _summary(retrained_run)["winners"]
    assert len(winners) == 2
    means = [w[OBJECTIVE]["mean"] for w in winners]
    assert means == sorted(means)
    for rank, winner in enumerate(winners, start=1):
        losses = [s[OBJECTIVE] for s in winner["seeds"]]
        assert [s["seed"] for s in winner["seeds"]] == [1, 2]
        assert winner[OBJECTIVE]["mean"] == pytest.approx(np.mean(losses))
        assert winner[OBJECTIVE]["std"] == pytest.approx(np.std(losses, ddof=1))
        folder = RunLayout(retrained_run).winners / f"{rank}-{winner['trial_id']}"
        assert {p.name for p in folder.iterdir()} == {"model.keras", "history.json", "hyperparameters.json",
                                                      "validation.npz"}
    assert RunLayout(retrained_run).best_winner().name == winners[0]["dir"]


def test_saved_model_is_the_best_seed_at_its_best_epoch(retrained_run):
    """The saved weights reproduce the best validation loss seen, not the last epoch's."""
    winner = _summary(retrained_run)["winners"][0]
    data = dataset.prepare(load_config(retrained_run), progress=False)
    model = keras.saving.load_model(RunLayout(retrained_run).best_winner() / "model.keras")
    scores = model.evaluate(data.dataset("val"), return_dict=True, verbose=0)
    assert scores["weighted_loss"] == pytest.approx(winner[OBJECTIVE]["best"], rel=1e-4)
    history = json.loads((RunLayout(retrained_run).best_winner() / "history.json").read_text())
    seed = next(s for s in winner["seeds"] if s["seed"] == winner["best_seed"])
    start = [seed["start_" + OBJECTIVE]] if "start_" + OBJECTIVE in seed else []  # epoch 0: the search's weights
    assert min(history[OBJECTIVE] + start) == pytest.approx(winner[OBJECTIVE]["best"])


def test_retrain_never_reads_the_test_split_and_replaces_old_winners(run_copy, monkeypatch):
    read = []
    original = dataset.RunData.indices  # every pipeline of a split asks for its rows by name
    monkeypatch.setattr(dataset.RunData, "indices", lambda self, name: read.append(name) or original(self, name))
    summary = retrain(load_config(run_copy), top_k=1, seeds=1, max_epochs=1, augment=False, log=lambda line: None)
    assert "test" not in read and {"train", "val"} <= set(read)
    assert len(summary["winners"]) == 1 and not summary["augment"]
    assert sorted(p.name for p in RunLayout(run_copy).winners.iterdir()) == [summary["winners"][0]["dir"], "summary.json"]


def test_rebuilt_hyperparameters_are_the_trials(retrained_run):
    best = json.loads(RunLayout(retrained_run).best.read_text())["top"][0]
    hp = trial_hyperparameters(load_config(retrained_run), best["trial_id"])
    assert {k: hp.values[k] for k in best["hyperparameters"]} == best["hyperparameters"]


def test_missing_search_results_are_a_user_error(tmp_path, retrained_run):
    config = load_config(retrained_run).replace(run_dir=str(tmp_path))
    with pytest.raises(UserError, match="search"):
        retrain(config)
    with pytest.raises(UserError, match="retrain"):
        RunLayout(tmp_path).best_winner()
    with pytest.raises(UserError, match="missing"):
        trial_hyperparameters(config, "9999")


def test_retrain_then_evaluate_commands_on_an_existing_run(run_copy):
    from click.testing import CliRunner

    from cxr_tuner.cli import cli

    runner = CliRunner()
    result = runner.invoke(cli, ["retrain", str(run_copy), "--top-k", "1", "--max-epochs", "1", "--no-augment"])
    assert result.exit_code == 0, result.output
    assert "best: 1-" in result.output
    result = runner.invoke(cli, ["evaluate", str(run_copy)])
    assert result.exit_code == 0, result.output
    assert (RunLayout(run_copy).metrics).is_file()


def _top_hp(backbone="mobilenet_025", depth=1, learning_rate=1e-3):
    hp = keras_tuner.HyperParameters()
    hp.values.update(backbone=backbone, unfreeze_depth=depth, learning_rate=learning_rate)
    return hp


def test_the_variant_with_the_lowest_validation_loss_is_chosen_and_printed():
    losses = {(1, False): 0.30, (1, True): 0.25, (2, True): 0.28}  # (depth, lr decay) -> loss
    lines = []

    def fit(hp, callbacks):
        decays = any(isinstance(c, keras.callbacks.ReduceLROnPlateau) for c in callbacks)
        return losses[hp.values["unfreeze_depth"], decays]

    chosen, tried = pick_variant(fit, _top_hp(), "imagenet", lines.append, specs=BUILT_IN)
    assert chosen.name == "lr decay" and chosen.lr_decay and not chosen.extra_block
    assert sorted(tried.values()) == sorted(losses.values())
    assert "lr decay" in lines[0] and "0.2500" in lines[0]
