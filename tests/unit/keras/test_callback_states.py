"""Which callbacks' states are saved, and how; pickling only when asked."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import pytest

from ftharness.keras import callback_states
from ftharness.worker import ConfigurationError

pytestmark = pytest.mark.slow


class WithState(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.count = 0

    def get_state(self):
        return {"count": self.count}

    def set_state(self, state):
        self.count = state["count"]


class Plain(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = [1, 2]


class StoppingWithOwnState(keras.callbacks.EarlyStopping):
    def get_state(self):
        return {"mine": True}

    def set_state(self, state):
        self.mine = state["mine"]


def test_own_protocol_then_builtin_adapters_then_only_requested_pickling():
    ours, own, plain, pickled = object(), WithState(), Plain(), Plain()
    stopping, own_stopping = keras.callbacks.EarlyStopping(), StoppingWithOwnState()
    saved = callback_states.saved_callbacks(
        [ours, own, plain, pickled, stopping, own_stopping], exclude=ours, pickled=[pickled]
    )
    assert [(item.callback, item.kind) for item in saved] == [
        (own, callback_states.KIND_OWN),
        (pickled, callback_states.KIND_PICKLE),
        (stopping, callback_states.KIND_BUILTIN),
        (own_stopping, callback_states.KIND_OWN),
    ]


def test_states_round_trip_with_arrays_and_pickles():
    own, pickled, stopping = WithState(), Plain(), keras.callbacks.EarlyStopping()
    own.count, pickled.seen = 5, [7, 8, 9]
    stopping.on_train_begin()
    stopping.best_weights = [keras.ops.convert_to_numpy(keras.ops.ones((2, 2)))]
    stopping.wait, stopping.best = 2, 0.25
    saved = callback_states.saved_callbacks([own, pickled, stopping], None, [pickled])
    entries, groups = callback_states.capture(saved)
    assert set(groups) == {"callback.1", "callback.2"}  # the pickle, the weights

    fresh_own, fresh_pickled, fresh_stopping = WithState(), Plain(), keras.callbacks.EarlyStopping()
    fresh_stopping.on_train_begin()
    fresh = callback_states.saved_callbacks(
        [fresh_own, fresh_pickled, fresh_stopping], None, [fresh_pickled]
    )
    callback_states.restore(fresh, entries, groups, "ckpt-1")
    assert fresh_own.count == 5
    assert fresh_pickled.seen == [7, 8, 9]
    assert (fresh_stopping.wait, fresh_stopping.best) == (2, 0.25)
    assert fresh_stopping.best_weights[0].tolist() == [[1.0, 1.0], [1.0, 1.0]]


def test_a_changed_callback_list_restores_matching_ones_and_warns(caplog):
    own = WithState()
    own.count = 3
    entries, groups = callback_states.capture(callback_states.saved_callbacks([own], None))
    other, fresh = keras.callbacks.EarlyStopping(), WithState()
    other.on_train_begin()
    saved = callback_states.saved_callbacks([other, fresh], None)
    callback_states.restore(saved, entries, groups, "ckpt-1")
    assert fresh.count == 0  # not in the same place: not restored
    assert "differ from the checkpoint's" in caplog.text


def test_an_unpicklable_callback_is_refused_at_start():
    class HoldsALock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            import threading

            self.lock = threading.Lock()

    with pytest.raises(ConfigurationError, match="HoldsALock cannot be pickled"):
        callback_states.check_picklable([HoldsALock()])
