"""The data position: what is counted, what a checkpoint records, input kinds."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest
import tensorflow as tf

from ftharness.keras import data_position
from ftharness.keras.data_position import DataPosition, DataTracker

pytestmark = pytest.mark.slow


class FakeIterator:
    def __init__(self, name: str):
        self.name = name
        self.pulled = 0

    def __next__(self):
        self.pulled += 1
        return (np.zeros((1, 1)), np.zeros((1, 1)))


def test_the_position_counts_iterators_and_batches_pulled_from_the_current_one():
    tracker = DataTracker(None, data_position.INPUT_ARRAYS)
    first, second = FakeIterator("a"), FakeIterator("b")
    for _ in range(3):
        tracker.before_train_step(first)
        tracker.batches_trained(1)
    assert tracker.position(at_epoch_boundary=False) == DataPosition(
        0, 3, None, tracker.position(False).start_rng
    )
    tracker.before_train_step(second)
    tracker.batches_trained(1)
    position = tracker.position(at_epoch_boundary=False)
    assert (position.iterators_before, position.skip) == (1, 1)
    assert position.start_rng is not None  # generators before the iterator's first pull
    # At an epoch boundary (no steps_per_epoch) the next epoch makes a new iterator.
    at_boundary = tracker.position(at_epoch_boundary=True)
    assert (at_boundary.iterators_before, at_boundary.skip, at_boundary.start_rng) == (2, 0, None)


def test_a_resume_skips_the_recorded_batches_once_with_the_recorded_generators():
    tracker = DataTracker(None, data_position.INPUT_ARRAYS)
    np.random.seed(1)
    from ftharness.keras import rng

    start = rng.capture_host()
    seen_first = []
    tracker.prepare_resume(DataPosition(2, 3, None, start), seen_first.append)
    np.random.seed(99)
    training_draw_state = rng.capture_host()
    iterator = FakeIterator("a")
    tracker.before_train_step(iterator)
    assert iterator.pulled == 3 and len(seen_first) == 1
    assert rng.capture_host() == training_draw_state  # put back after the skip
    tracker.before_train_step(iterator)
    assert iterator.pulled == 3  # once only
    tracker.batches_trained(1)
    assert tracker.position(False).iterators_before == 2
    assert tracker.position(False).skip == 4
    assert tracker.position(False).start_rng == start


def test_positions_round_trip_through_json():
    position = DataPosition(4, 7, 12, {"python": [3, [1], None], "numpy": []})
    assert DataPosition.from_json(position.to_json()) == position
    assert DataPosition.from_json({"iterators_before": 1, "skip": 2}) == DataPosition(1, 2)


def test_input_kinds():
    def generator():
        yield 1

    class Data(keras.utils.PyDataset):
        def __len__(self):
            return 1

        def __getitem__(self, index):
            return np.zeros((1, 1)), np.zeros((1, 1))

    kind = data_position.input_kind
    assert kind(np.zeros((2, 2))) == data_position.INPUT_ARRAYS
    assert kind({"a": np.zeros(2)}) == data_position.INPUT_ARRAYS
    assert kind(tf.data.Dataset.range(3)) == data_position.INPUT_TF_DATA
    assert kind(Data()) == data_position.INPUT_PYDATASET
    assert kind(generator()) == data_position.INPUT_GENERATOR
    assert kind(iter([1, 2])) == data_position.INPUT_GENERATOR
    assert kind(object()) == data_position.INPUT_OTHER
