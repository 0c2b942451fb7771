"""Where `fit()` is in its data, and how to put a resumed `fit()` back there.

Keras's EpochIterator makes data iterators as training goes (see
`_internals`): one per epoch, one more at the end of an epoch of known
length, or one for the whole run with `steps_per_epoch`. What a `tf.data`
iterator yields can depend on how many iterators the same dataset made
before it: `shuffle(reshuffle_each_iteration=True)` draws new seeds from the
dataset's seed generator each time an iterator is made. So the position in
the data is two numbers:

- `iterators_before`: iterators made before the one training resumes in;
- `skip`: batches already pulled from that one.

A resumed `fit()` makes (and drops, unread) `iterators_before` iterators
first, so that the next one, made by Keras, is the same as in the
uninterrupted run; then it pulls `skip` batches from it before the first
train step. Reading and dropping costs the batches' loading time, never
their training time. A pipeline with `cache()` gets its first iterator read
to the end, as the first epoch did, so that the cache holds what it held.

Data code may draw from Python's and NumPy's global generators when an
iterator starts (Keras shuffles a PyDataset's batches with `random` there).
So the position also holds those generators as they were just before the
iterator's first batch was pulled, and the skip replays the loading with
them; the generators of the training (callbacks) are put back after it.

Python generators cannot be re-created at a position: a new generator is
skipped forward, which is exact only if it restarts identically (`warnings`
says so at start).
"""

from __future__ import annotations

import inspect
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from ftharness.keras import _internals, rng

log = logging.getLogger("ftharness.keras")

INPUT_ARRAYS = "arrays"
INPUT_TF_DATA = "tf.data"
INPUT_PYDATASET = "PyDataset"
INPUT_GENERATOR = "generator"
INPUT_OTHER = "other"

# Inputs whose batches come from a tf.data pipeline Keras builds or the user
# gave: dropping unread iterators replays their seed generators.
_TF_DATA_BACKED = frozenset({INPUT_ARRAYS, INPUT_TF_DATA})


def input_kind(x) -> str:
    """What `fit()` was given as `x`, in the terms the warnings use."""
    import tensorflow as tf

    if isinstance(x, tf.data.Dataset | tf.distribute.DistributedDataset):
        return INPUT_TF_DATA
    if isinstance(x, keras.utils.PyDataset):
        return INPUT_PYDATASET
    if inspect.isgenerator(x) or (hasattr(x, "__next__") and not hasattr(x, "__len__")):
        return INPUT_GENERATOR
    if isinstance(x, np.ndarray | list | tuple | dict | tf.Tensor) or hasattr(x, "__array__"):
        return INPUT_ARRAYS
    return INPUT_OTHER


@dataclass(frozen=True)
class DataPosition:
    """A checkpoint's place in the data (see the module docstring)."""

    iterators_before: int
    skip: int
    # EpochIterator's batch count, learned after a first epoch of unknown length.
    num_batches: int | None = None
    # Python's and NumPy's generators before the first batch of the iterator
    # resumed in was pulled (rng.capture_host), when batches are to be skipped.
    start_rng: dict | None = None

    def to_json(self) -> dict:
        return {
            "iterators_before": self.iterators_before,
            "skip": self.skip,
            "num_batches": self.num_batches,
            "start_rng": self.start_rng,
        }

    @classmethod
    def from_json(cls, record: dict) -> DataPosition:
        return cls(
            int(record["iterators_before"]),
            int(record["skip"]),
            record.get("num_batches"),
            record.get("start_rng"),
        )


class DataTracker:
    """Follows the data iterators of one `fit()`; repositions a resumed one.

    Observes through `before_train_step` (each call of the train function,
    with the iterator it pulls from), `batches_trained` and `at_epoch_end`.
    """

    def __init__(self, fit_call: _internals.FitCall | None, kind: str) -> None:
        self.fit_call = fit_call
        self.kind = kind
        self.created = 0  # iterators made so far (dropped ones included)
        self.consumed = 0  # batches pulled from the current one
        self._current: Callable[[], Any] = lambda: None
        self._start_rng: dict | None = None  # see DataPosition.start_rng
        self._resume_start_rng: dict | None = None
        self._pending_skip = 0
        self._after_skip: Callable[[Any], None] | None = None
        self._steps_per_epoch_to_restore: int | None = None
        self._shortened_by = 0
        self._num_batches_unknown_at_begin = False

    @property
    def epoch_iterator(self):
        return self.fit_call.epoch_iterator if self.fit_call is not None else None

    @property
    def steps_per_epoch_set(self) -> bool:
        return (
            self.epoch_iterator is not None
            and _internals.steps_per_epoch(self.epoch_iterator) is not None
        )

    # -- observing ---------------------------------------------------------------

    def before_train_step(self, iterator) -> None:
        if self._current() is not iterator:
            self._follow(iterator)
        if self._start_rng is None:
            resumed, self._resume_start_rng = self._resume_start_rng, None
            self._start_rng = resumed if resumed is not None else rng.capture_host()
        if self._pending_skip or self._after_skip is not None:
            self._skip(iterator)

    def batches_trained(self, count: int) -> None:
        self.consumed += count

    def at_epoch_end(self) -> None:
        """Count the iterator Keras makes at the end of an epoch of known length."""
        if self.epoch_iterator is None:
            return
        kept = _internals.current_data_iterator(self.epoch_iterator)
        if kept is not None and kept is not self._current():
            self._follow(kept)

    def position(self, at_epoch_boundary: bool) -> DataPosition:
        known = (
            _internals.known_num_batches(self.epoch_iterator)
            if self.epoch_iterator is not None
            else None
        )
        if at_epoch_boundary and not self.steps_per_epoch_set:
            # The next epoch makes a fresh iterator; the current one is done.
            return DataPosition(self.created, 0, known)
        start_rng = self._start_rng if self.consumed else None
        return DataPosition(max(self.created - 1, 0), self.consumed, known, start_rng)

    def _follow(self, iterator) -> None:
        self.created += 1
        self.consumed = 0
        self._start_rng = None
        try:
            # A weak reference: holding the iterator would keep its prefetch
            # buffers alive after Keras dropped it.
            self._current = weakref.ref(iterator)
        except TypeError:
            self._current = lambda: iterator

    # -- resuming ----------------------------------------------------------------

    def prepare_resume(
        self, position: DataPosition, after_skip: Callable[[Any], None] | None
    ) -> None:
        """At `on_train_begin`: replay the iterators made so far, arm the skip.

        `after_skip(first_batch)` runs once the batches are skipped, just
        before the first train step (`first_batch` is None if none was).
        """
        if self.epoch_iterator is not None:
            if self.kind in _TF_DATA_BACKED:
                self._replay_iterators(position.iterators_before)
            if (
                position.num_batches is not None
                and _internals.known_num_batches(self.epoch_iterator) is None
            ):
                _internals.set_num_batches(self.epoch_iterator, position.num_batches)
        self.created = position.iterators_before
        self._pending_skip = position.skip
        self._resume_start_rng = position.start_rng
        self._after_skip = after_skip

    def begin_resumed_epoch(self, batches_done: int) -> None:
        """At the resumed epoch's `on_epoch_begin`: it has `batches_done` fewer batches."""
        iterator = self.epoch_iterator
        if iterator is None or batches_done == 0:
            return
        self._shortened_by = batches_done
        steps = _internals.steps_per_epoch(iterator)
        if steps is not None:
            # Keras loops `steps_per_epoch` times; the skipped batches are done.
            self._steps_per_epoch_to_restore = steps
            _internals.set_steps_per_epoch(iterator, steps - batches_done)
        # Otherwise Keras ends the epoch once the batches it counts as seen
        # reach the epoch's length: the skip counts as seen (`_skip`).
        self._num_batches_unknown_at_begin = _internals.known_num_batches(iterator) is None

    def end_resumed_epoch(self) -> None:
        """At the resumed epoch's `on_epoch_end`: later epochs are whole again."""
        iterator = self.epoch_iterator
        if iterator is None or not self._shortened_by:
            return
        if self._steps_per_epoch_to_restore is not None:
            _internals.set_steps_per_epoch(iterator, self._steps_per_epoch_to_restore)
            self._steps_per_epoch_to_restore = None
        learned = _internals.known_num_batches(iterator)
        if self._num_batches_unknown_at_begin and learned is not None:
            # Keras learned the epoch's length from a run that lacked the skipped batches.
            _internals.set_num_batches(iterator, learned + self._shortened_by)
        self._shortened_by = 0

    def _replay_iterators(self, count: int) -> None:
        if count <= 0:
            return
        source = _internals.data_source(self.epoch_iterator)
        read_first = _internals.pipeline_has_cache(source) and not self.steps_per_epoch_set
        for index in range(count):
            replayed = iter(source)
            if index == 0 and read_first:
                for _ in replayed:  # fills the cache, as the first epoch did
                    pass
        log.debug("replayed %d data iterator(s)", count)

    def _skip(self, iterator) -> None:
        count, self._pending_skip = self._pending_skip, 0
        after_skip, self._after_skip = self._after_skip, None
        training_rng = rng.capture_host()
        if self._start_rng is not None:
            rng.restore_host(self._start_rng)  # what the data code drew from then
        first_batch = None
        for index in range(count):
            batch = next(iterator)
            if index == 0:
                first_batch = batch
        rng.restore_host(training_rng)
        self.consumed += count
        if count and self.epoch_iterator is not None:
            _internals.add_steps_seen(self.epoch_iterator, count)
        if after_skip is not None:
            after_skip(first_batch)
