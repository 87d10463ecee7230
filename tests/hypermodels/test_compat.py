"""Each private name of Keras, KerasTuner and TensorFlow the project uses exists, with the shape it is used in.

They all go through `hypermodels.compat`; an upgrade of the pinned versions that moves or
changes one fails here, not in a user's run.
"""

import functools
import threading
import types
from concurrent import futures

import grpc
import keras
import keras_tuner
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api

from cxr_tuner.hypermodels.backbones.builtin import BACKBONES
from cxr_tuner.hypermodels.compat import keras_compat, keras_tuner_compat, tf_compat


def _chain():
    inputs = keras.Input((4,), name="x")
    dense = keras.layers.Dense(3, name="dense_head")
    outputs = keras.layers.Activation("relu", name="act")(dense(inputs))
    return keras.Model(inputs, outputs), dense


# --- Keras ----------------------------------------------------------------------------------------


def test_keras_names_unnamed_layers_by_their_class():
    assert keras_compat.auto_name("Conv2D") == "conv2d"
    assert keras_compat.auto_name("GlobalAveragePooling2D") == "global_average_pooling2d"
    assert keras.layers.GlobalAveragePooling2D().name.startswith("global_average_pooling2d")  # what the rule describes


def test_keras_graph_edges_are_readable_both_ways():
    model, dense = _chain()
    act = model.get_layer("act")
    assert len(keras_compat.call_inputs(act)) == 1 and keras_compat.call_inputs(act)[0] is dense.output
    assert keras_compat.producer(keras_compat.call_inputs(act)[0]) is dense
    assert keras_compat.producer(model.outputs[0]) is act
    assert len(keras_compat.call_outputs(dense)) == 1 and tuple(keras_compat.call_outputs(dense)[0].shape) == (None, 3)
    assert keras_compat.call_outputs(keras.layers.Dense(2)) == []  # never called


def test_keras_graph_runs_on_another_input_with_fresh_layers():
    model, _ = _chain()
    fresh = []

    def copy(op):
        fresh.append(op.__class__.from_config(op.get_config()))
        return fresh[-1]

    def tagged(op, *args, **kwargs):
        return keras.layers.Identity(name=f"{op.name}_tag")(op(*args, **kwargs))

    inputs = keras.Input((4,))
    outputs = keras_compat.run_through_graph(model, inputs, copy, tagged)
    rebuilt = keras.Model(inputs, outputs)
    assert {"dense_head_tag", "act_tag"} <= {layer.name for layer in rebuilt.layers}
    assert {layer.name for layer in fresh} == {"dense_head", "act"}
    assert tuple(keras_compat.run_through_graph(model, keras.Input((4,)), copy).shape) == (None, 3)


def test_keras_tells_functional_models_from_subclassed_ones():
    class Subclassed(keras.Model):
        def call(self, x):
            return x

    assert keras_compat.is_functional(_chain()[0]) and not keras_compat.is_functional(Subclassed())


def test_keras_applications_tell_their_sizes_and_weight_files():
    assert keras_compat.input_size_bounds(keras.applications.ResNet50) == (224, 32)
    assert keras_compat.input_size_bounds(keras.applications.InceptionV3) == (299, 75)
    build = functools.partial(keras.applications.MobileNetV2, include_top=False, weights="imagenet",
                              input_shape=(96, 96, 3))
    assert keras_compat.fetched_file_name(build) == BACKBONES["mobilenet_v2"].weight_file(96)
    keras.backend.clear_session()


def test_asking_swaps_for_this_thread_only_and_puts_the_original_back():
    module = types.SimpleNamespace(answer=lambda: "original")
    original = module.answer
    seen = {}
    with keras_compat.asking(module, "answer", lambda: "recorded"):
        seen["here"] = module.answer()
        other = threading.Thread(target=lambda: seen.update(there=module.answer()))
        other.start()
        other.join()
    assert seen == {"here": "recorded", "there": "original"}
    assert module.answer is original
    with pytest.raises(ValueError), keras_compat.asking(module, "answer", lambda: "recorded"):
        raise ValueError  # an error inside: the original is back all the same
    assert module.answer is original


# --- KerasTuner -----------------------------------------------------------------------------------


def _oracle(tmp_path):
    hp = keras_tuner.HyperParameters()
    hp.Float("x", 0.0, 1.0)
    oracle = keras_tuner.oracles.RandomSearchOracle(keras_tuner.Objective("score", "min"), max_trials=5, seed=1,
                                                    hyperparameters=hp)
    oracle._set_project_dir(str(tmp_path), "tuner")
    return oracle


def _build(hp):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(hp.Int("units", 1, 2))])
    model.compile(loss="mse")
    return model


def test_keras_tuner_saves_a_fits_best_epoch_and_converts_hparams(tmp_path):
    callback = keras_tuner_compat.SaveBestEpoch(keras_tuner.Objective("val_loss", "min"), str(tmp_path / "best"))
    assert isinstance(callback, keras.callbacks.Callback)
    hp = keras_tuner.HyperParameters()
    hp.Float("lr", 1e-4, 1e-2, sampling="log")
    hp.Choice("units", [8, 16])
    domains = keras_tuner_compat.hparams_domains(hp, hparams_api)
    assert sorted(d.name for d in domains) == ["lr", "units"]
    assert all(isinstance(d, hparams_api.HParam) for d in domains)


def test_keras_tuner_oracle_service_is_reachable(tmp_path):
    servicer = keras_tuner_compat.OracleServicer(_oracle(tmp_path))
    assert all(callable(getattr(servicer, n)) for n in ("GetSpace", "CreateTrial", "UpdateTrial", "EndTrial"))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    keras_tuner_compat.add_oracle_servicer(servicer, server)
    channel = grpc.insecure_channel("localhost:1")
    assert callable(keras_tuner_compat.oracle_stub(channel).GetSpace)
    assert type(keras_tuner_compat.get_space_request()).__name__ == "GetSpaceRequest"
    channel.close()


def test_keras_tuner_oracle_unlocks_after_an_error_and_requeues_a_trial(tmp_path):
    oracle = _oracle(tmp_path)

    @keras_tuner.synchronized
    def failing(oracle):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        failing(oracle)
    keras_tuner_compat.unlock_after_error(oracle)
    other = threading.Thread(target=oracle.create_trial, args=("elsewhere",), daemon=True)
    other.start()
    other.join(timeout=30)
    assert not other.is_alive()  # another thread got the oracle's lock
    trial = oracle.create_trial("first")
    oracle.ongoing_trials.pop("first")  # its worker released
    keras_tuner_compat.requeue(oracle, trial.trial_id)
    assert oracle.create_trial("second").trial_id == trial.trial_id


def test_keras_tuner_tuner_internals_and_the_build_hook(tmp_path):
    built = []

    class Recording(keras_tuner_compat.TrialModelHook, keras_tuner.RandomSearch):
        def build_trial_model(self, hp, build):
            built.append(hp.values["units"])
            return super().build_trial_model(hp, build)

    tuner = Recording(_build, objective="loss", max_trials=1, directory=str(tmp_path), project_name="t", seed=1)
    assert str(keras_tuner_compat.checkpoint_path(tuner, "00")).startswith(str(tmp_path))
    callback = keras.callbacks.History()
    copies = keras_tuner_compat.copied_callbacks(tuner, [callback])
    assert len(copies) == 1 and copies[0] is not callback and isinstance(copies[0], keras.callbacks.History)
    assert keras_tuner_compat.is_worker(tuner) is False
    tuner.search(np.zeros((4, 2)), np.zeros((4, 1)), epochs=1, verbose=0)
    assert built and built[-1] in (1, 2)
    keras.backend.clear_session()


# --- TensorFlow -----------------------------------------------------------------------------------


def test_tensorflow_gradient_registry_is_a_table_of_names():
    registry = tf_compat.gradient_registry()
    assert isinstance(registry, dict) and "MatMul" in registry


def test_tensorflow_op_determinism_can_be_asked_and_turned_off():
    before = tf_compat.op_determinism_enabled()
    tf.config.experimental.enable_op_determinism()
    assert tf_compat.op_determinism_enabled()
    tf_compat.disable_op_determinism()
    assert not tf_compat.op_determinism_enabled()
    if before:
        tf.config.experimental.enable_op_determinism()
