"""Every use of a private Keras detail, in one place.

Keras offers no public way to resume mid-epoch or to see the other callbacks
of a `fit()`. Each function below leans on one private detail, says which,
and has a test in tests/keras/test_internals.py that breaks when Keras
changes it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import keras


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


class _EndOfResumedEpoch:
    """A truthy `stop_training` value that only we set, so only we clear it."""

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return "ftharness.EndOfResumedEpoch"


END_OF_RESUMED_EPOCH = _EndOfResumedEpoch()


def end_epoch_early(model: keras.Model) -> None:
    """Leave the batch loop of the current epoch after this batch.

    `fit()` breaks out of the batch loop when `stop_training` is truthy, runs
    validation and `on_epoch_end`, then stops unless it was cleared. We set a
    sentinel; `clear_end_epoch_early` clears it only if no other callback set
    `stop_training` to True in between (then training stops, as it asked).
    """
    if not model.stop_training:
        model.stop_training = END_OF_RESUMED_EPOCH


def clear_end_epoch_early(model: keras.Model) -> None:
    if model.stop_training is END_OF_RESUMED_EPOCH:
        model.stop_training = False


def skip_batches_on_next_step(
    model: keras.Model, count: int, after_skip: Callable[[object], None]
) -> Callable[[], None]:
    """Drop `count` batches from the data iterator before the next train step.

    `after_skip(first_batch)` runs once the batches are dropped, just before
    training resumes. Private: `Model.train_function(iterator)`, built before
    `on_train_begin`, pulls its batches from the iterator it is given.
    Returns an undo function.
    """
    original = model.train_function

    def skip_then_train(iterator):
        model.train_function = original
        first_batch = next(iterator)
        for _ in range(count - 1):
            next(iterator)
        after_skip(first_batch)
        return original(iterator)

    model.train_function = skip_then_train

    def undo() -> None:
        if model.train_function is skip_then_train:
            model.train_function = original

    return undo


def build_metrics(model: keras.Model, data_batch) -> None:
    """Create the compiled metrics' variables, as the first train step would.

    Without a distribution strategy the TF trainer builds them only when it
    traces the train step. Private: `Trainer._symbolic_build(data_batch=...)`,
    Keras's own shape-only build (it computes nothing and changes no state).
    """
    model._symbolic_build(data_batch=data_batch)
