"""Every use of a private Keras or TensorFlow detail, in one place.

Keras offers no public way to resume mid-epoch, to see the other callbacks
of a `fit()`, or to reach the data iterator it trains from. Each function
below leans on one private detail, says which, and has a test in
tests/unit/keras/test_internals.py that breaks when Keras or TensorFlow
changes it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras

# -- fit() itself -------------------------------------------------------------


def set_initial_epoch(model: keras.Model, epoch: int) -> None:
    """Make the running `fit()` start at `epoch`.

    Private: `Trainer._initial_epoch`, read by `fit()` right after
    `on_train_begin` (Keras's own BackupAndRestore does the same).
    """
    model._initial_epoch = epoch


def clear_initial_epoch(model: keras.Model) -> None:
    model._initial_epoch = None


def calling_callback_list(callback: keras.callbacks.Callback, depth: int = 4):
    """The `CallbackList` that is calling `callback` right now, or None.

    Private: the frame of `CallbackList.set_model` / `on_train_begin` is on
    the stack with the list as `self`. A callback has no other way to learn
    who its siblings are.
    """
    frame = sys._getframe(1)
    for _ in range(depth):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, keras.callbacks.CallbackList) and any(
            c is callback for c in owner.callbacks
        ):
            return owner
        frame = frame.f_back
    return None


def move_to_end(callback_list, callback: keras.callbacks.Callback) -> None:
    """Make `callback` run after all the others in every hook.

    Rebinding `callbacks` (not mutating it) leaves a loop that is iterating
    the old list undisturbed.
    """
    callback_list.callbacks = [c for c in callback_list.callbacks if c is not callback] + [callback]


class RunFirstOnce(keras.callbacks.Callback):
    """Runs `action()` once, ahead of every other callback, at the next
    `on_train_batch_begin`; then leaves the list. See `run_first_once`."""

    def __init__(self, callback_list, action: Callable[[], None]) -> None:
        super().__init__()
        self._callback_list = callback_list
        self._action = action
        # Rebound, not mutated, as in move_to_end.
        callback_list.callbacks = [self, *callback_list.callbacks]

    def on_train_batch_begin(self, batch, logs=None) -> None:
        self.remove()
        self._action()

    def remove(self) -> None:
        self._callback_list.callbacks = [c for c in self._callback_list.callbacks if c is not self]


def run_first_once(callback_list, on_train_batch_begin: Callable[[], None]) -> RunFirstOnce | None:
    """Have `on_train_batch_begin()` run before any callback's next batch hook.

    Our own callback runs last; some things must happen before the others
    see the next batch. None if the callback list is unknown.
    """
    if callback_list is None:
        return None
    return RunFirstOnce(callback_list, on_train_batch_begin)


@dataclass(frozen=True)
class FitCall:
    """The arguments of the running `fit()` and the iterator it draws batches from.

    `epoch_iterator` is Keras's `TFEpochIterator`, a local of `fit()`;
    `arguments` are `fit()`'s parameters as it sees them after its own
    adjustments (validation split, capped epochs).
    """

    epoch_iterator: Any
    arguments: dict


_FIT_PARAMETERS = (
    "x",
    "y",
    "batch_size",
    "epochs",
    "shuffle",
    "steps_per_epoch",
    "validation_split",
    "validation_freq",
    "class_weight",
)


def running_fit(model: keras.Model, depth: int = 8) -> FitCall | None:
    """The `fit()` of `model` that is calling us right now, or None.

    Private: the frame of `TensorFlowTrainer.fit` is on the stack during
    `on_train_begin`, with its locals `self`, `epoch_iterator` and its
    parameters.
    """
    frame = sys._getframe(1)
    for _ in range(depth):
        if frame is None:
            return None
        if frame.f_code.co_name == "fit" and frame.f_locals.get("self") is model:
            local = frame.f_locals
            if "epoch_iterator" in local:
                return FitCall(
                    local["epoch_iterator"],
                    {name: local.get(name) for name in _FIT_PARAMETERS},
                )
        frame = frame.f_back
    return None


def distribution_strategy(model: keras.Model) -> str | None:
    """The class name of the tf.distribute strategy `model` trains under, or None.

    Private: `TensorFlowTrainer._distribute_strategy`, None unless the model
    was built in a strategy's scope (the public property falls back to the
    default strategy, which is no strategy at all).
    """
    strategy = getattr(model, "_distribute_strategy", None)
    return type(strategy).__name__ if strategy is not None else None


# -- the EpochIterator of fit() -------------------------------------------------
#
# Keras's EpochIterator (keras/src/trainers/epoch_iterator.py) makes a new
# data iterator at the start of every epoch (and, for data of known length,
# one more at its end) unless `steps_per_epoch` is set, in which case one
# iterator lasts across epochs. It passes the iterator to `train_function`,
# which pulls the batches.


def data_source(epoch_iterator):
    """What `EpochIterator` calls `iter()` on: the (distributed) `tf.data.Dataset`.

    Private: `TFEpochIterator._get_iterator()`.
    """
    return epoch_iterator._get_iterator()


def current_data_iterator(epoch_iterator):
    """The iterator `EpochIterator` keeps between epochs (None if it keeps none).

    Private: `EpochIterator._current_iterator`.
    """
    return epoch_iterator._current_iterator


def known_num_batches(epoch_iterator) -> int | None:
    """Batches per epoch as `EpochIterator` counts them (learned after one
    epoch for data of unknown length).

    Private: `EpochIterator._num_batches`, read at the start of each epoch.
    """
    return epoch_iterator._num_batches


def set_num_batches(epoch_iterator, count: int | None) -> None:
    epoch_iterator._num_batches = count


def steps_per_epoch(epoch_iterator) -> int | None:
    """`fit(steps_per_epoch=...)`; read at the start of each epoch.

    Private: `EpochIterator.steps_per_epoch` (a class of keras.src).
    """
    return epoch_iterator.steps_per_epoch


def set_steps_per_epoch(epoch_iterator, count: int | None) -> None:
    epoch_iterator.steps_per_epoch = count


def add_steps_seen(epoch_iterator, count: int) -> None:
    """Count `count` more batches as pulled from the current iterator.

    Private: `EpochIterator._steps_seen`, compared with `_num_batches` to
    know when an iterator kept across epochs has run out.
    """
    epoch_iterator._steps_seen += count


# -- the train function ----------------------------------------------------------


class TrainFunctionWrapper:
    """Calls `before(iterator)` ahead of each call of `model.train_function`.

    Private: `Model.train_function(iterator)`, built by `fit()` before
    `on_train_begin`, pulls its batches from the iterator it is given; we
    replace the attribute on the instance and put the original back.
    """

    def __init__(self, model: keras.Model, before: Callable[[Any], None]) -> None:
        self.model = model
        self.original = model.train_function
        if isinstance(self.original, TrainFunctionWrapper):  # left by a fit() that raised
            self.original = self.original.original
        self.before = before
        model.train_function = self

    def __call__(self, iterator):
        self.before(iterator)
        return self.original(iterator)

    def remove(self) -> None:
        if self.model.train_function is self:
            self.model.train_function = self.original


def build_metrics(model: keras.Model, data_batch) -> None:
    """Create the compiled metrics' variables, as the first train step would.

    Without a distribution strategy the TF trainer builds them only when it
    traces the train step. Private: `Trainer._symbolic_build(data_batch=...)`,
    Keras's own shape-only build (it computes nothing and changes no state).
    """
    model._symbolic_build(data_batch=data_batch)


# -- tf.data ---------------------------------------------------------------------


def pipeline_has_cache(dataset) -> bool:
    """True if `dataset` or one of its inputs is a `Dataset.cache()`.

    Private: `DatasetV2._inputs()` and the class name `CacheDataset`.
    """
    pending = [dataset]
    seen = 0
    while pending and seen < 10_000:  # pipelines are small; the bound only guards a cycle
        node = pending.pop()
        seen += 1
        if type(node).__name__ == "CacheDataset":
            return True
        inputs = getattr(node, "_inputs", None)
        if callable(inputs):
            try:
                pending.extend(inputs())
            except (NotImplementedError, TypeError):
                continue
    return False


# -- global random generators ------------------------------------------------------


def tf_global_generator_if_created():
    """TensorFlow's global `tf.random.Generator`, or None if nothing created it.

    `tf.random.get_global_generator()` would create one. Private: the module
    variable `stateful_random_ops.global_generator`.
    """
    from tensorflow.python.ops import stateful_random_ops

    return stateful_random_ops.global_generator


def keras_global_seed_generator_if_created():
    """The `SeedGenerator` `keras.random` uses when no seed is given, or None.

    `keras.src.random.seed_generator.global_seed_generator()` would create
    one. Private: the global attribute it is kept under.
    """
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator

    return global_state.get_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR)


def keras_global_seed_generator():
    """The global `SeedGenerator`, created if needed (private module, as above)."""
    from keras.src.random import seed_generator

    return seed_generator.global_seed_generator()


# -- built-in callbacks ----------------------------------------------------------


def model_checkpoint_batch_counters(callback) -> dict:
    """`ModelCheckpoint`'s count towards an integer `save_freq`.

    Private: `_batches_seen_since_last_saving` and `_last_batch_seen`.
    """
    return {
        "batches_seen_since_last_saving": int(callback._batches_seen_since_last_saving),
        "last_batch_seen": callback._last_batch_seen,
    }


def set_model_checkpoint_batch_counters(callback, counters: dict) -> None:
    callback._batches_seen_since_last_saving = int(counters["batches_seen_since_last_saving"])
    callback._last_batch_seen = counters["last_batch_seen"]
