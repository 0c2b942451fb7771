"""The private Keras details ftharness leans on; these break when Keras changes them."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest

from ftharness.keras import _internals

pytestmark = pytest.mark.slow


class Recorder(keras.Model):
    """Records the first feature of every batch it trains on (eagerly)."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(1)
        self.seen: list[float] = []

    def call(self, x):
        return self.dense(x)

    def train_step(self, data):
        x, _ = data
        self.seen.append(float(x[0, 0]))
        return {"first": x[0, 0]}


def recorder_model() -> Recorder:
    model = Recorder()
    model.compile(optimizer="sgd", loss="mse", run_eagerly=True)
    model(np.zeros((1, 1), "float32"))  # build
    return model


DATA = (np.arange(8, dtype="float32").reshape(8, 1), np.zeros((8, 1), "float32"))


class Hook(keras.callbacks.Callback):
    def __init__(self, on_train_begin=None, on_batch_end=None, on_epoch_end=None):
        super().__init__()
        self._begin, self._batch_end, self._epoch_end = on_train_begin, on_batch_end, on_epoch_end
        self.epochs: list[int] = []

    def on_train_begin(self, logs=None):
        if self._begin:
            self._begin(self.model)

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)

    def on_train_batch_end(self, batch, logs=None):
        if self._batch_end:
            self._batch_end(self.model, batch)

    def on_epoch_end(self, epoch, logs=None):
        if self._epoch_end:
            self._epoch_end(self.model, epoch)


def test_initial_epoch_set_in_on_train_begin_is_where_fit_starts():
    model = recorder_model()
    hook = Hook(on_train_begin=lambda m: _internals.set_initial_epoch(m, 2))
    model.fit(*DATA, batch_size=4, epochs=4, shuffle=False, verbose=0, callbacks=[hook])
    assert hook.epochs == [2, 3]


def test_the_calling_callback_list_is_found_and_reordered():
    order: list[str] = []

    class Named(keras.callbacks.Callback):
        def __init__(self, name, move=False):
            super().__init__()
            self.name, self.move = name, move

        def set_model(self, model):
            super().set_model(model)
            if self.move:
                found = _internals.calling_callback_list(self)
                assert found is not None
                _internals.move_to_end(found, self)

        def on_train_batch_end(self, batch, logs=None):
            order.append(self.name)

    model = recorder_model()
    model.fit(
        *DATA,
        batch_size=8,
        epochs=1,
        verbose=0,
        callbacks=[Named("ours", move=True), Named("a"), Named("b")],
    )
    assert order == ["a", "b", "ours"]


def test_skipping_batches_drops_them_from_the_data_before_the_next_step():
    model = recorder_model()
    skipped_first = []
    hook = Hook(
        on_train_begin=lambda m: _internals.skip_batches_on_next_step(
            m, 3, after_skip=lambda batch: skipped_first.append(float(batch[0][0, 0]))
        )
    )
    model.fit(*DATA, batch_size=1, epochs=1, shuffle=False, verbose=0, callbacks=[hook])
    assert skipped_first == [0.0]
    assert model.seen[:2] == [3.0, 4.0]
    assert len(model.seen) == 5  # Keras sees the data run out after the skip


def test_ending_an_epoch_early_continues_with_the_next_epoch():
    model = recorder_model()
    hook = Hook(
        on_batch_end=lambda m, batch: _internals.end_epoch_early(m) if len(m.seen) == 2 else None,
        on_epoch_end=lambda m, epoch: _internals.clear_end_epoch_early(m),
    )
    model.fit(*DATA, batch_size=2, epochs=2, shuffle=False, verbose=0, callbacks=[hook])
    assert model.seen == [0.0, 2.0, 0.0, 2.0, 4.0, 6.0]


def test_a_stop_asked_by_another_callback_still_stops_training():
    model = recorder_model()

    def stop_for_real(m, epoch):
        m.stop_training = True  # as EarlyStopping does

    hook = Hook(
        on_batch_end=lambda m, batch: _internals.end_epoch_early(m) if len(m.seen) == 1 else None,
        on_epoch_end=stop_for_real,
    )
    clearer = Hook(on_epoch_end=lambda m, epoch: _internals.clear_end_epoch_early(m))
    model.fit(*DATA, batch_size=2, epochs=3, shuffle=False, verbose=0, callbacks=[hook, clearer])
    assert hook.epochs == [0]


def test_building_metrics_creates_their_variables_without_changing_state():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", metrics=["mae"])
    before = len(model.metrics_variables)
    weights = [w.numpy().copy() for w in model.weights]
    _internals.build_metrics(model, (np.ones((4, 2), "float32"), np.ones((4, 1), "float32")))
    assert len(model.metrics_variables) > before
    assert all(float(np.sum(v.numpy())) == 0.0 for v in model.metrics_variables)
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(weights, model.weights, strict=True))
