"""Every use of a private Keras or TensorFlow detail, in one place.

Keras offers no public way to resume mid-epoch, to see the other callbacks
of a `fit()`, or to reach the data iterator it trains from. Each function
below leans on one private detail, says which, and has a test in
tests/unit/keras/test_internals.py that breaks when Keras or TensorFlow
changes it. (Just over 400 lines: keeping every private detail in this one
file is the point, STYLE.md's rule 9.)
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


def place_first_and_last(
    callback_list, first: keras.callbacks.Callback, last: keras.callbacks.Callback
) -> None:
    """Make `first` run before, and `last` after, all the others in every hook.

    Private: `CallbackList.callbacks`, the list its hooks iterate. Rebinding
    it (not mutating it) leaves a loop that is iterating the old list
    undisturbed.
    """
    others = [c for c in callback_list.callbacks if c is not first and c is not last]
    callback_list.callbacks = [first, *others, last]


# The hooks through which fit() (and the evaluate() it runs for validation)
# calls every callback.
_FIT_HOOKS = (
    "on_train_begin",
    "on_epoch_begin",
    "on_train_batch_begin",
    "on_train_batch_end",
    "on_epoch_end",
    "on_test_begin",
    "on_test_batch_begin",
    "on_test_batch_end",
    "on_test_end",
    "on_train_end",
)


def ends_fit(error: BaseException) -> bool:
    """True if `error`, leaving a callback hook or the train step, ends `fit()`.

    Private: `TensorFlowTrainer.fit` handles no exception itself except in
    `EpochIterator.catch_stop_iteration()`, where StopIteration and
    `tf.errors.OutOfRangeError` end an epoch's data, not the training.
    """
    import tensorflow as tf

    return not isinstance(error, StopIteration | tf.errors.OutOfRangeError)


class FitExitGuard:
    """Calls `on_exit(error)` when an exception ends the running `fit()`.

    Keras calls `on_train_end` only when `fit()` returns; an exception in a
    callback, in the train step or in validation leaves `fit()` with no hook
    at all. Everything `fit()` runs goes through its `CallbackList`'s hooks
    or `model.train_function` / `test_function`, so the guard wraps those
    (instance attributes, removed by `remove()`) and reports the first
    exception that `ends_fit`, before it propagates. Private: as
    `ends_fit`, and `CallbackList`'s hook methods looked up on the instance.
    """

    def __init__(self, callback_list, model: keras.Model, on_exit: Callable) -> None:
        self._callback_list = callback_list
        self._model = model
        self._on_exit = on_exit
        self._test_function = None
        for name in _FIT_HOOKS:
            setattr(callback_list, name, self._guarded(getattr(callback_list, name), name))

    def _guarded(self, hook: Callable, name: str) -> Callable:
        def guarded(*args, **kwargs):
            try:
                if name == "on_test_begin":
                    self._guard_test_function()
                return hook(*args, **kwargs)
            except BaseException as error:
                self.report(error)
                raise

        return guarded

    def _guard_test_function(self) -> None:
        # evaluate() makes its test function just before on_test_begin.
        original = self._model.test_function
        if original is None or getattr(original, "_ftharness_guarded", False):
            return

        def guarded(iterator):
            try:
                return original(iterator)
            except BaseException as error:
                self.report(error)
                raise

        guarded._ftharness_guarded = True
        guarded._ftharness_original = original
        self._model.test_function = guarded
        self._test_function = guarded

    def report(self, error: BaseException) -> None:
        """Tell `on_exit` about `error` if it ends fit() (once)."""
        if self._on_exit is not None and ends_fit(error):
            on_exit, self._on_exit = self._on_exit, None
            on_exit(error)

    def remove(self) -> None:
        self._on_exit = None
        for name in _FIT_HOOKS:
            vars(self._callback_list).pop(name, None)
        if self._test_function is not None and self._model.test_function is self._test_function:
            self._model.test_function = self._test_function._ftharness_original
        self._test_function = None


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
    replace the attribute on the instance and put the original back. An
    exception that ends `fit()` is reported to `guard` on its way out.
    """

    def __init__(
        self,
        model: keras.Model,
        before: Callable[[Any], None],
        guard: FitExitGuard | None = None,
    ) -> None:
        self.model = model
        self.original = model.train_function
        if isinstance(self.original, TrainFunctionWrapper):  # left by a fit() that raised
            self.original = self.original.original
        self.before = before
        self.guard = guard
        model.train_function = self

    def __call__(self, iterator):
        try:
            self.before(iterator)
            return self.original(iterator)
        except BaseException as error:
            if self.guard is not None:
                self.guard.report(error)
            raise

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
