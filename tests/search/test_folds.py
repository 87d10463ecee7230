"""--folds K: patient-grouped folds of train+val, a trial's score their mean, the final model on train+val."""

import json

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from tests.conftest import FAST_SEARCH, error_line, run_cli, saved_trials
from cxr_tuner.data import audit, pipeline
from cxr_tuner.data.errors import UserError
from cxr_tuner.data.split import fold_split
from cxr_tuner.hypermodels.classifier import OBJECTIVE
from cxr_tuner.search.engine import dataset
from cxr_tuner.search.final import assemble
from cxr_tuner.search.tuning import hparams
from cxr_tuner.search.engine.config import load_config, new_config
from cxr_tuner.search.engine.layout import WINNER_HISTORY, WINNER_OUT_OF_FOLD, RunLayout
from cxr_tuner.search.final.retrain import retrain


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_folds_never_split_a_group_and_validate_on_every_class(seed):
    rng = np.random.default_rng(seed)
    groups = [f"p{g}" for g in rng.integers(0, 40, 200)]
    labels = [["a", "b", "c"][int(g[1:]) % 3] for g in groups]  # a patient's films share a class
    groups[:20] = [""] * 20  # unknown patients: each film its own group
    pairs = fold_split(labels, groups, 4, seed)
    assert len(pairs) == 4
    held = np.concatenate([val for _, val in pairs])
    assert sorted(held.tolist()) == list(range(200))  # each item validates exactly once
    for kept, val in pairs:
        assert {groups[i] for i in kept if groups[i]}.isdisjoint({groups[i] for i in val if groups[i]})
        assert {labels[i] for i in val} == {"a", "b", "c"}
    assert [v.tolist() for _, v in fold_split(labels, groups, 4, seed)] == [v.tolist() for _, v in pairs]


def test_fold_split_refuses_a_class_with_fewer_groups_than_folds():
    labels = ["a"] * 10 + ["b"] * 10
    groups = [f"a{i}" for i in range(10)] + ["b1"] * 5 + ["b2"] * 5
    with pytest.raises(UserError, match="class b has 2"):
        fold_split(labels, groups, 3)


def test_run_folds_cover_train_and_val_only_and_keep_the_split_groups(tmp_path, demo_data):
    config = new_config(str(tmp_path / "run"), str(demo_data), backbones=("vanilla_cnn",), image_size=32,
                        weights="none", folds=3)
    data = dataset.prepare(config, progress=False)
    folds = data.folds()
    fit = set(data.indices(dataset.FIT).tolist())
    groups = dict(zip(data.indices(dataset.FIT), audit.leak_groups(
        [data.examples[i] for i in sorted(fit)], data.images[sorted(fit)])))
    for kept, val in folds:
        assert set(kept) | set(val) == fit and not set(kept) & set(val)
        assert not {groups[i] for i in kept} & {groups[i] for i in val}
        assert set(data.labels[val]) == set(range(len(data.config.class_names)))
    assert not fit & set(data.indices("test"))


def test_search_refuses_in_one_line_when_a_class_has_too_few_groups(tmp_path, demo_data):
    result = run_cli("search", "--data", demo_data, "--run-dir", tmp_path / "run", *FAST_SEARCH, "--folds", "60")
    error_line(result, "--folds 60 needs at least 60 near-duplicate or patient groups", "use --folds")
    assert not RunLayout(tmp_path / "run").tuner.exists()  # refused before any trial


@pytest.fixture(scope="module")
def folded_search(tmp_path_factory, demo_data):
    """A 3-fold search's run directory and the model of each trace of a training step it made."""
    run_dir = tmp_path_factory.mktemp("folds") / "run"
    with pytest.MonkeyPatch.context() as patch:
        traces = _count_traces(patch)
        result = run_cli("search", "--data", demo_data, "--run-dir", run_dir, *FAST_SEARCH, "--max-epochs", "2",
                         "--folds", "3")
    assert result.exit_code == 0, result.output
    return run_dir, traces


@pytest.fixture(scope="module")
def folded_run(folded_search):
    return folded_search[0]


def test_a_folds_trial_scores_the_mean_of_its_folds_and_logs_each_in_hparams(folded_run):
    layout = RunLayout(folded_run)
    trials = sorted(layout.tuner.glob("trial_*/trial.json"))
    assert trials
    for path in trials:
        trial = json.loads(path.read_text())
        if trial["status"] != "COMPLETED":
            continue
        metrics = trial["metrics"]["metrics"]
        scores = [metrics[hparams.fold_metric(f)]["observations"][-1]["value"][0] for f in range(3)]
        assert hparams.fold_metric(3) not in metrics
        assert trial["score"] == pytest.approx(np.mean(scores)) and len(set(scores)) > 1
        assert len(hparams.fold_epochs(metrics, 3)) == 3
        acc = event_accumulator.EventAccumulator(str(layout.tensorboard / trial["trial_id"]))
        acc.Reload()
        assert {OBJECTIVE, *(hparams.fold_metric(f) for f in range(3))} <= set(acc.Tags()["tensors"])


def test_retrain_with_folds_trains_on_train_and_val_for_the_folds_epochs_and_never_reads_test(folded_run, monkeypatch):
    config = load_config(folded_run)
    data = dataset.prepare(config, progress=False)
    fit, test = set(data.indices(dataset.FIT).tolist()), set(data.indices("test").tolist())
    seen, make = [], pipeline.make_dataset
    monkeypatch.setattr(pipeline, "make_dataset", lambda *a, rows=None, **k: seen.append(rows) or make(*a, rows=rows, **k))
    lines = []
    summary = retrain(config, top_k=1, log=lines.append, from_="search")  # folds fall back to scratch, saying so
    assert summary["from"] == "scratch" and any(line.startswith("retrain with --folds: from scratch") for line in lines)
    # A row past the films is a training copy (copies are made of train+val films only); a
    # training pipeline's rows are (film, its copies) pairs.
    films = [rows[:, 0] if rows.ndim == 2 else rows[rows < len(data.images)] for rows in map(np.asarray, seen)]
    read = set(np.concatenate(films).tolist())
    assert read == fit and not read & test
    assert any(set(rows.tolist()) == fit for rows in films)  # the final model's training: all of train+val
    winner = RunLayout(folded_run).winners / summary["winners"][0]["dir"]
    history = json.loads((winner / WINNER_HISTORY).read_text())
    assert not any(k.startswith("val_") for k in history)
    trial = json.loads(RunLayout(folded_run).trial(summary["winners"][0]["trial_id"]).read_text())
    epochs = int(np.round(np.mean(hparams.fold_epochs(trial["metrics"]["metrics"], 3))))
    assert summary["winners"][0]["best_epoch"] == epochs == len(history["loss"])
    with np.load(winner / WINNER_OUT_OF_FOLD) as saved:
        assert set(saved["rows"].tolist()) == fit
    record = assemble.assemble(config, point="off", log=lambda line: None)
    assert record["fitted_on"] == assemble.FITTED_ON_FOLDS  # ensemble choice and temperature: out of fold
    assert record["validation_weighted_loss_by_size"][0] == pytest.approx(summary["winners"][0][OBJECTIVE]["mean"])



def _count_traces(monkeypatch) -> list:
    """Records the model of each trace of a Keras training step (``train_step``'s Python body runs only while tracing)."""
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    traces, step = [], TensorFlowTrainer.train_step
    monkeypatch.setattr(TensorFlowTrainer, "train_step", lambda self, data: traces.append(id(self)) or step(self, data))
    return traces


def test_a_folds_trial_traces_its_training_step_once_not_once_per_fold(folded_search):
    run_dir, traces = folded_search
    completed = [t for t in saved_trials(run_dir).values() if t["status"] == "COMPLETED"]
    assert len(completed) >= 2
    # One model per trial traced its step (TensorFlow traces a new function twice: once more for the
    # variables its first call creates); its 3 folds' fits reuse it.
    assert len(set(traces)) == len(completed) and len(traces) == 2 * len(completed)


def test_a_restarted_model_trains_as_a_fresh_build_does_without_tracing_again(tmp_path, demo_data, monkeypatch):
    import keras_tuner

    from cxr_tuner.search.final.retrain import build_model
    from cxr_tuner.search.tuning.tuner import Restart, fresh_keras_state

    config = new_config(str(tmp_path / "run"), str(demo_data), backbones=("vanilla_cnn",), image_size=32,
                        weights="none")
    data = dataset.prepare(config, progress=False)
    hp = keras_tuner.HyperParameters()
    hp.values.update(backbone="vanilla_cnn", head_depth=1, head_units_0=64, dropout=0.3, learning_rate=3e-3)

    def fit(model):
        history = model.fit(data.dataset("train", shuffle=True), validation_data=data.dataset("val"), epochs=2,
                            verbose=0)
        return history.history[OBJECTIVE]

    fresh_keras_state(config.seed)
    fresh = fit(build_model(data.config, hp))
    fresh_keras_state(config.seed)
    model = build_model(data.config, hp)
    start = Restart(model)
    start.reset()
    traces = _count_traces(monkeypatch)
    first = fit(model)
    traced = len(traces)
    start.reset()
    again = fit(model)
    assert traced and len(traces) == traced  # the second fit reused the first's traced step
    assert first == pytest.approx(fresh, rel=1e-5) and again == pytest.approx(fresh, rel=1e-5)
