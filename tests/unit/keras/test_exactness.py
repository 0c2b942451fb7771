"""What cannot be restored exactly is named at start."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest
import tensorflow as tf

from ftharness.keras import _internals, data_position, exactness

pytestmark = pytest.mark.slow


def call(x, **arguments) -> _internals.FitCall:
    return _internals.FitCall(None, {"x": x, "shuffle": True, **arguments})


class Stateless(keras.utils.PyDataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        return np.zeros((1, 1)), np.zeros((1, 1))


class Reshuffles(Stateless):
    def on_epoch_end(self):
        self.order = np.random.permutation(4)


class ReshufflesWithState(Reshuffles):
    def get_state(self):
        return {}

    def set_state(self, state):
        pass


def test_exact_inputs_have_no_limits():
    assert exactness.limits(call(np.zeros(3)), data_position.INPUT_ARRAYS) == []
    dataset = tf.data.Dataset.range(3)
    assert exactness.limits(call(dataset), data_position.INPUT_TF_DATA) == []
    assert exactness.limits(call(Stateless()), data_position.INPUT_PYDATASET) == []
    assert exactness.limits(call(ReshufflesWithState()), data_position.INPUT_PYDATASET) == []


def test_a_generator_is_named():
    (reason,) = exactness.limits(call(iter([])), data_position.INPUT_GENERATOR)
    assert "Python generator" in reason


def test_a_pydataset_that_changes_without_get_state_is_named():
    (reason,) = exactness.limits(call(Reshuffles()), data_position.INPUT_PYDATASET)
    assert "Reshuffles" in reason and "get_state()" in reason


def test_a_shuffled_pydataset_read_across_epochs_is_exact():
    # Keras's shuffle where its pass starts is replayed with the generators of then.
    limits = exactness.limits(call(Stateless(), steps_per_epoch=3), data_position.INPUT_PYDATASET)
    assert limits == []


def test_a_non_deterministic_pipeline_is_named():
    options = tf.data.Options()
    options.deterministic = False
    dataset = tf.data.Dataset.range(3).with_options(options)
    (reason,) = exactness.limits(call(dataset), data_position.INPUT_TF_DATA)
    assert "deterministic=False" in reason


def test_outside_keras_fit_is_named():
    (reason,) = exactness.limits(None, data_position.INPUT_OTHER)
    assert "not running inside Keras's fit()" in reason


def test_a_pydataset_loaded_by_a_shuffling_pool_is_named():
    pooled = Stateless(workers=2)
    (reason,) = exactness.limits(call(pooled), data_position.INPUT_PYDATASET)
    assert "pool of 2 worker(s)" in reason
    unshuffled = exactness.limits(call(pooled, shuffle=False), data_position.INPUT_PYDATASET)
    assert unshuffled == []


def test_mirrored_strategy_is_exact():
    # Its metric accumulators are restored replica by replica (state.assign_group):
    # nothing to say at start, for any input that is exact alone.
    assert exactness.limits(call(np.zeros(3)), data_position.INPUT_ARRAYS, "MirroredStrategy") == []
    dataset = tf.data.Dataset.range(3)
    assert exactness.limits(call(dataset), data_position.INPUT_TF_DATA, "MirroredStrategy") == []


def test_under_mirrored_strategy_only_the_inputs_limits_are_named():
    (reason,) = exactness.limits(call(iter([])), data_position.INPUT_GENERATOR, "MirroredStrategy")
    assert "Python generator" in reason and "MirroredStrategy" not in reason


def test_another_distribution_strategy_is_still_not_exact():
    (reason,) = exactness.limits(call(np.zeros(3)), data_position.INPUT_ARRAYS, "TPUStrategy")
    assert "TPUStrategy" in reason and "single-device training only" in reason
