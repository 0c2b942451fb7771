"""The state of Keras's built-in callbacks, saved without user code.

Keras's stateful callbacks have no `get_state()` / `set_state()`. Each
adapter below names the attributes that make up one callback's state, as
Keras's sources use them; tests/unit/keras/test_builtin_states.py breaks
when Keras renames or repurposes one. (Attributes with a leading underscore
are read through `_internals`.)

An adapter's state is JSON plus, where a callback holds weights
(`EarlyStopping(restore_best_weights=True)`), a list of arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import keras
import numpy as np

from ftharness.keras import _internals


@dataclass
class CallbackState:
    json: dict
    arrays: list[np.ndarray] = field(default_factory=list)


class StateAdapter(Protocol):
    def get_state(self, callback) -> CallbackState: ...

    def set_state(self, callback, state: CallbackState) -> None: ...


def _number(value) -> float | None:
    """Monitored values arrive as floats, NumPy scalars or 0-d tensors."""
    return None if value is None else float(np.asarray(value))


class HistoryState:
    """`History`: the logs of every epoch so far, so a resumed run's
    `fit()` returns the whole history, as an uninterrupted run's does."""

    def get_state(self, callback: keras.callbacks.History) -> CallbackState:
        return CallbackState(
            {
                "epoch": list(getattr(callback, "epoch", [])),
                "history": {key: list(values) for key, values in callback.history.items()},
            }
        )

    def set_state(self, callback: keras.callbacks.History, state: CallbackState) -> None:
        callback.epoch = list(state.json["epoch"])
        callback.history = {key: list(values) for key, values in state.json["history"].items()}
        if callback.epoch and callback.model is not None:
            callback.model.history = callback  # as History.on_epoch_end leaves it


class EarlyStoppingState:
    """`EarlyStopping`: patience counter, best value and epoch, best weights."""

    def get_state(self, callback: keras.callbacks.EarlyStopping) -> CallbackState:
        weights = callback.best_weights
        return CallbackState(
            {
                "wait": int(callback.wait),
                "stopped_epoch": int(callback.stopped_epoch),
                "best": _number(callback.best),
                "best_epoch": int(callback.best_epoch),
                "has_best_weights": weights is not None,
            },
            [np.array(w) for w in weights] if weights is not None else [],
        )

    def set_state(self, callback: keras.callbacks.EarlyStopping, state: CallbackState) -> None:
        callback.wait = state.json["wait"]
        callback.stopped_epoch = state.json["stopped_epoch"]
        callback.best = state.json["best"]
        callback.best_epoch = state.json["best_epoch"]
        callback.best_weights = (
            [np.array(w) for w in state.arrays] if state.json["has_best_weights"] else None
        )


class ReduceLROnPlateauState:
    """`ReduceLROnPlateau`: patience and cooldown counters, best value (the
    learning rate itself is an optimizer variable)."""

    def get_state(self, callback: keras.callbacks.ReduceLROnPlateau) -> CallbackState:
        return CallbackState(
            {
                "wait": int(callback.wait),
                "cooldown_counter": int(callback.cooldown_counter),
                "best": _number(callback.best),
            }
        )

    def set_state(self, callback: keras.callbacks.ReduceLROnPlateau, state: CallbackState) -> None:
        callback.wait = state.json["wait"]
        callback.cooldown_counter = state.json["cooldown_counter"]
        callback.best = state.json["best"]


class ModelCheckpointState:
    """`ModelCheckpoint`: the best value (`save_best_only`) and the batch
    count towards an integer `save_freq`."""

    def get_state(self, callback: keras.callbacks.ModelCheckpoint) -> CallbackState:
        return CallbackState(
            {"best": _number(callback.best), **_internals.model_checkpoint_batch_counters(callback)}
        )

    def set_state(self, callback: keras.callbacks.ModelCheckpoint, state: CallbackState) -> None:
        callback.best = state.json["best"]
        _internals.set_model_checkpoint_batch_counters(callback, state.json)


class CSVLoggerState:
    """`CSVLogger`: the file's content as of the checkpoint.

    `CSVLogger.on_train_begin` opens its file before we restore (truncating
    it unless `append=True`), and a crash after a row was written but before
    the next checkpoint would leave a row the resumed run writes again. So
    the checkpoint holds the file's content, and restoring rewrites the open
    file with it: rows of epochs after the checkpoint are gone, none is
    duplicated, and the header is written once.
    """

    def get_state(self, callback: keras.callbacks.CSVLogger) -> CallbackState:
        try:
            # newline="": the csv module writes "\r\n"; keep the bytes as they are.
            with open(callback.filename, newline="") as file:
                content = file.read()
        except FileNotFoundError:
            content = ""
        return CallbackState({"content": content})

    def set_state(self, callback: keras.callbacks.CSVLogger, state: CallbackState) -> None:
        content = state.json["content"]
        file = callback.csv_file
        if file is None or file.closed:
            with open(callback.filename, "w", newline="") as fresh:
                fresh.write(content)
            return
        file.truncate(0)
        file.seek(0)  # in append mode writes go to the end, which is now 0
        file.write(content)
        file.flush()
        # The header is in the content already; the next row must not add one.
        # Keys and writer are rebuilt from the next epoch's logs, as after a
        # fresh on_train_begin.
        callback.append_header = not content
        callback.keys = None
        callback.writer = None


ADAPTERS: dict[type, StateAdapter] = {
    keras.callbacks.History: HistoryState(),
    keras.callbacks.EarlyStopping: EarlyStoppingState(),
    keras.callbacks.ReduceLROnPlateau: ReduceLROnPlateauState(),
    keras.callbacks.ModelCheckpoint: ModelCheckpointState(),
    keras.callbacks.CSVLogger: CSVLoggerState(),
}


def adapter_for(callback) -> StateAdapter | None:
    """The adapter of the nearest built-in class `callback` is an instance of."""
    for klass in type(callback).__mro__:
        adapter = ADAPTERS.get(klass)
        if adapter is not None:
            return adapter
    return None
