"""--time-budget's deadline: when no trial starts, and the Hyperband oracle that keeps it (made by make_tuner).

No model trains here: the oracle is fed made-up scores.
"""

import keras
import keras_tuner

from cxr_tuner.search.engine.config import new_config
from cxr_tuner.search.tuning.budget.deadline import Deadline, DeadlineHyperbandOracle
from cxr_tuner.search.tuning.tuner import XrayHyperband, make_tuner
from cxr_tuner.search.engine.task import task_of
from tests.search.tuning.budget.test_plan import _oracle, _run


def test_the_deadline_learns_how_long_trials_really_take():
    now = [0.0]
    deadline = Deadline(at=100.0, seconds_for=lambda epochs: 10.0 * epochs, clock=lambda: now[0])
    assert deadline.allows(1)
    now[0] = 40.0  # the trial predicted at 10 s took 40 s: a 1-epoch trial now ends at 80 s, a 2-epoch one at 120 s
    assert not deadline.allows(2) and deadline.stopped


def test_the_oracle_stops_at_the_deadline_and_its_saved_state_resumes_the_same_search(tmp_path):
    full = _run(_oracle(9, 3, tmp_path / "full"))
    now = [0.0]
    oracle = _oracle(9, 3, tmp_path / "cut", DeadlineHyperbandOracle)
    oracle.deadline = Deadline(at=10.0, seconds_for=lambda epochs: 0.5 * epochs, clock=lambda: now[0])
    cut = _run(oracle, tick=lambda: now.__setitem__(0, now[0] + 1.0))
    assert 1 <= len(cut) < len(full) and oracle.deadline.stopped
    assert cut == full[:len(cut)]
    # What KerasTuner saved holds no trial it refused: reloaded without a deadline, the search goes on as the
    # unbudgeted one would have.
    oracle.save()
    resumed = _oracle(9, 3, tmp_path / "cut")
    resumed.reload()
    assert cut + _run(resumed) == full


def test_the_hyperband_tuner_searches_on_the_deadline_oracle_and_stays_keras_tuners_hyperband(tmp_path):
    config = new_config(str(tmp_path / "run"), backbones=("vanilla_cnn",), weights="none", image_size=32,
                        max_epochs=9, factor=3, seed=4)

    def build(hp):
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(hp.Int("units", 1, 4))])
        model.compile(loss="mse")
        return model

    tuner = make_tuner(config, build)
    assert isinstance(tuner, XrayHyperband) and isinstance(tuner, keras_tuner.Hyperband)
    oracle = tuner.oracle
    assert type(oracle) is DeadlineHyperbandOracle and oracle.deadline is None
    assert (oracle.max_epochs, oracle.factor, oracle.seed) == (9, 3, 5)  # oracle_seed: --seed 4 -> 5
    assert oracle.objective.name == task_of(config).objective and oracle.objective.direction == "min"
    keras.backend.clear_session()
