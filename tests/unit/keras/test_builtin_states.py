"""Keras's built-in callbacks: the attributes our adapters save are their state.

Each test runs the real callback in a real fit(), moves its state into a
fresh instance through the adapter, and checks the fresh one then behaves
as the original would have. They break when Keras renames or repurposes an
attribute.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest

from ftharness.keras import builtin_states

pytestmark = pytest.mark.slow

X = np.linspace(-1, 1, 16, dtype="float32").reshape(16, 1)
Y = 2 * X


def tiny_model() -> keras.Model:
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def move_state(adapter, source, target) -> None:
    """The way a checkpoint does it: JSON through text, arrays as copies."""
    import json

    state = adapter.get_state(source)
    state = builtin_states.CallbackState(
        json.loads(json.dumps(state.json)), [np.array(a) for a in state.arrays]
    )
    adapter.set_state(target, state)


class Losses(keras.callbacks.Callback):
    """Feeds a scripted 'loss' to the callbacks after it, epoch by epoch."""

    def __init__(self, values):
        super().__init__()
        self.values = list(values)

    def on_epoch_end(self, epoch, logs=None):
        logs["loss"] = self.values[epoch]


def test_every_stateful_builtin_has_an_adapter():
    for klass in (
        keras.callbacks.History,
        keras.callbacks.EarlyStopping,
        keras.callbacks.ReduceLROnPlateau,
        keras.callbacks.ModelCheckpoint,
        keras.callbacks.CSVLogger,
    ):
        assert klass in builtin_states.ADAPTERS

    class MyStopping(keras.callbacks.EarlyStopping):
        pass

    assert (
        builtin_states.adapter_for(MyStopping())
        is builtin_states.ADAPTERS[keras.callbacks.EarlyStopping]
    )
    assert builtin_states.adapter_for(keras.callbacks.TerminateOnNaN()) is None


def test_history_resumed_holds_every_epoch():
    model = tiny_model()
    first = model.fit(X, Y, epochs=2, verbose=0)
    resumed = keras.callbacks.History()
    resumed.set_model(model)
    resumed.on_train_begin()
    move_state(builtin_states.HistoryState(), first, resumed)
    resumed.on_epoch_end(2, {"loss": 0.5})
    assert resumed.epoch == [0, 1, 2]
    assert resumed.history["loss"] == [*first.history["loss"], 0.5]
    assert model.history is resumed


def test_early_stopping_resumed_stops_where_the_original_would():
    losses = [1.0, 0.5, 0.6, 0.7, 0.8, 0.9]
    model = tiny_model()
    original = keras.callbacks.EarlyStopping(monitor="loss", patience=3, restore_best_weights=True)
    model.fit(X, Y, epochs=3, verbose=0, callbacks=[Losses(losses), original])
    assert (original.wait, original.best, original.best_epoch) == (1, 0.5, 1)
    best = [np.array(w) for w in original.best_weights]

    resumed = keras.callbacks.EarlyStopping(monitor="loss", patience=3, restore_best_weights=True)
    resumed.set_model(model)
    resumed.on_train_begin()  # Keras resets it here; the adapter runs after
    move_state(builtin_states.EarlyStoppingState(), original, resumed)
    feeder = Losses(losses)
    feeder.set_model(model)
    for epoch in (3, 4):
        logs = {}
        feeder.on_epoch_end(epoch, logs)
        resumed.on_epoch_end(epoch, logs)
    assert resumed.stopped_epoch == 4 and model.stop_training
    resumed.on_train_end()
    assert all(np.array_equal(a, w) for a, w in zip(best, model.get_weights(), strict=True))


def test_reduce_lr_on_plateau_resumed_keeps_its_patience_and_cooldown():
    model = tiny_model()
    original = keras.callbacks.ReduceLROnPlateau(monitor="loss", patience=2, factor=0.5, cooldown=1)
    model.fit(X, Y, epochs=3, verbose=0, callbacks=[Losses([1.0, 1.0, 1.0]), original])
    assert original.cooldown_counter == 1  # reduced at epoch 2, cooling down
    assert float(model.optimizer.learning_rate) == pytest.approx(0.05)
    resumed = keras.callbacks.ReduceLROnPlateau(monitor="loss", patience=2, factor=0.5, cooldown=1)
    resumed.set_model(model)
    resumed.on_train_begin()
    move_state(builtin_states.ReduceLROnPlateauState(), original, resumed)
    assert (resumed.wait, resumed.cooldown_counter, resumed.best) == (0, 1, 1.0)


def test_model_checkpoint_resumed_keeps_its_best(tmp_path):
    path = str(tmp_path / "best.weights.h5")
    model = tiny_model()
    original = keras.callbacks.ModelCheckpoint(
        path, monitor="loss", save_best_only=True, save_weights_only=True
    )
    model.fit(X, Y, epochs=2, verbose=0, callbacks=[Losses([0.5, 0.7]), original])
    assert original.best == 0.5
    os.remove(path)
    resumed = keras.callbacks.ModelCheckpoint(
        path, monitor="loss", save_best_only=True, save_weights_only=True
    )
    move_state(builtin_states.ModelCheckpointState(), original, resumed)
    model.fit(X, Y, epochs=1, verbose=0, callbacks=[Losses([0.6]), resumed])
    assert not os.path.exists(path)  # 0.6 is no better than the restored 0.5


def test_csv_logger_resumed_appends_without_duplicate_header_or_rows(tmp_path):
    path = tmp_path / "log.csv"
    model = tiny_model()
    original = keras.callbacks.CSVLogger(str(path))
    model.fit(X, Y, epochs=2, verbose=0, callbacks=[original])
    state = builtin_states.CSVLoggerState().get_state(original)
    # The crash case: a third row was written after the checkpoint's state.
    with open(path, "a") as file:
        file.write("2,0.5,NA\r\n")

    resumed = keras.callbacks.CSVLogger(str(path))  # append=False: truncates at begin
    resumed.set_model(model)
    resumed.on_train_begin()
    builtin_states.CSVLoggerState().set_state(resumed, state)
    resumed.on_epoch_end(2, {"loss": 0.25})
    resumed.on_train_end()
    lines = path.read_text().splitlines()
    assert lines[:3] == state.json["content"].splitlines()
    assert len(lines) == 4 and lines[0].startswith("epoch,")
    assert lines[3].startswith("2,")
