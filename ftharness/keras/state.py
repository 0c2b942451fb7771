"""Capture and restore the whole training state of a Keras model.

Arrays (model variables, optimizer slots and step, metric accumulators, the
seed generators' states, arrays of callbacks' states) go to one binary file;
everything else (position in training and in the data, RNG states, other
callbacks' states) is plain JSON.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import keras
import numpy as np
import tensorflow as tf

from ftharness.checkpoint import arrays
from ftharness.checkpoint.arrays import ArrayEntry
from ftharness.keras.data_position import DataPosition
from ftharness.worker import IncompatibleCheckpointError

# 2 added the data position, the input's and the callbacks' kinds of state,
# the global TF/Keras generators and the fit() arguments; 1 is still read.
STATE_FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = frozenset({1, 2})
ARRAYS_FILE = "arrays.bin"
STATE_FILE = "state.json"

# Arrays are grouped by when they are restored: model and optimizer at
# on_train_begin; metrics just before the first train step of a mid-epoch
# resume (fit resets them at epoch begin); callbacks' arrays with their JSON
# state (groups "callback.N").
GROUP_TRAINING = "training"
GROUP_METRICS = "metrics"


@dataclass(frozen=True)
class Position:
    """Where training stands: `batch` batches of `epoch` are done; `step` in all."""

    epoch: int
    batch: int
    step: int


@dataclass(frozen=True)
class TrainingState:
    """Everything a resume needs; the one schema of a checkpoint's `state.json`.

    Built on the training thread (`capture` in the callback: the rest is
    plain JSON). Its arrays are either a copy in `SnapshotBuffers` (a
    periodic checkpoint written while training goes on) or views of the
    variables themselves (`capture_views`: a save committed before training
    goes on); both give the same bytes. Read back with `from_files`, which
    also reads format 1.
    """

    position: Position
    data: DataPosition  # where fit() is in its data (data_position)
    rng: dict  # the global generators (rng.capture)
    callbacks: list  # the other callbacks' JSON entries (callback_states.capture)
    input: object  # a PyDataset's get_state(), or None
    fit: dict  # the fit() arguments it was written under (fit_args.fingerprint)
    # group -> [(name, value)]: GROUP_TRAINING, GROUP_METRICS, "callback.N"
    arrays: dict[str, list[tuple[str, np.ndarray]]] = field(default_factory=dict)

    def to_files(self) -> dict[str, list]:
        index = {}
        chunks = []
        offset = 0
        for group, named_arrays in self.arrays.items():
            entries, group_chunks = arrays.pack(named_arrays)
            index[group] = [
                {**entry.to_json(), "offset": entry.offset + offset} for entry in entries
            ]
            offset += sum(entry.nbytes for entry in entries)
            chunks.extend(group_chunks)
        record = {
            "format_version": STATE_FORMAT_VERSION,
            "position": vars(self.position),
            "arrays": index,
            "rng": self.rng,
            "callbacks": self.callbacks,
            "data": self.data.to_json(),
            "input": self.input,
            "fit": self.fit,
        }
        return {ARRAYS_FILE: chunks, STATE_FILE: [json.dumps(record).encode()]}

    @classmethod
    def from_files(cls, files: Mapping[str, bytes | bytearray], location: str) -> TrainingState:
        """Parse a checkpoint's files (untrusted input): IncompatibleCheckpointError if they
        are not a Keras training state of a readable format."""
        try:
            record = json.loads(files[STATE_FILE])
            version = int(record["format_version"])
            if version not in READABLE_FORMAT_VERSIONS:
                raise IncompatibleCheckpointError(
                    f"checkpoint {location} has state format {version}; this ftharness reads "
                    f"{sorted(READABLE_FORMAT_VERSIONS)}"
                )
            position = Position(**record["position"])
            index = {
                group: [ArrayEntry.from_json(entry) for entry in entries]
                for group, entries in record["arrays"].items()
            }
            # Format 1 knew only the batch within the epoch, and no fit() arguments.
            data = record.get("data") or {"iterators_before": 0, "skip": position.batch}
            state = cls(
                position=position,
                data=DataPosition.from_json(data),
                rng=dict(record["rng"]),
                callbacks=list(record.get("callbacks", [])),
                input=record.get("input"),
                fit=dict(record.get("fit") or {}),
            )
            buffer = files[ARRAYS_FILE]
            loaded = {
                group: [
                    (entry.name, value)
                    for entry, value in zip(entries, arrays.unpack(entries, buffer), strict=True)
                ]
                for group, entries in index.items()
            }
        except (KeyError, ValueError, TypeError) as error:
            raise IncompatibleCheckpointError(
                f"checkpoint {location} is not a Keras training state ({error})"
            ) from None
        return replace(state, arrays=loaded)


def training_variables(model: keras.Model) -> list:
    variables = list(model.variables)
    if model.optimizer is not None:
        variables += list(model.optimizer.variables)
    return variables


def metric_variables(model: keras.Model) -> list:
    return list(getattr(model, "metrics_variables", []))


def named(variables: list) -> list[tuple[str, object]]:
    return [(variable.path, variable) for variable in variables]


def host_views(variables: list) -> list[np.ndarray]:
    """Read-only host arrays of the variables' current values, without copying on CPU.

    TensorFlow's CPU tensors give NumPy their own buffer (`np.asarray` of a
    read of the variable: measured, the same address on every read); on a
    GPU the read is one device-to-host copy. A view stays what it was when
    taken even if training goes on: a resource variable updated while a read
    of it is alive writes a new buffer (copy-on-write). Only the saves that
    commit before training goes on use views, so that cost never arises.
    """
    views = []
    for variable in variables:
        value = getattr(variable, "value", variable)
        if isinstance(value, tf.Variable):
            array = np.asarray(tf.convert_to_tensor(value))
        else:  # not TensorFlow's: one copy
            array = np.asarray(keras.ops.convert_to_numpy(value))
        array = array.view()
        array.flags.writeable = False  # TensorFlow's own memory: never written through
        views.append(array)
    return views


def capture_views(model: keras.Model) -> dict[str, list[tuple[str, np.ndarray]]]:
    """The model's arrays as views of its variables: for a save committed before
    training goes on (the final checkpoint, the end of training, a synchronous save)."""
    return {group: list(zip(names, views, strict=True)) for group, names, views in _groups(model)}


def _groups(model: keras.Model):
    for group, variables in (
        (GROUP_TRAINING, training_variables(model)),
        (GROUP_METRICS, metric_variables(model)),
    ):
        yield group, [variable.path for variable in variables], host_views(variables)


class SnapshotBuffers:
    """Host memory for periodic snapshots, allocated once and reused.

    A periodic checkpoint is written while training goes on, so its arrays
    must be a copy; this is that copy, made once per save into one buffer
    laid out as `arrays.bin` (every array at its offset in the file), which
    is allocated at the first save and reused for as long as the layout
    (names, shapes, dtypes) stays: no allocation, no page faults per save.
    The copy runs on `threads` threads over equal byte ranges (NumPy copies
    without the GIL): training is stalled for it, and its cores are idle.

    One set of buffers is enough because a snapshot is only taken once the
    previous write is committed (`BackgroundWriter.make_room`): the buffer is
    never read by a write in flight when it is overwritten.
    """

    def __init__(self, threads: int | None = None) -> None:
        self._threads = max(1, min(threads or os.cpu_count() or 1, _MAX_COPY_THREADS))
        self._layout: list[tuple[str, str, tuple[str, tuple[int, ...]]]] = []
        self._buffer: np.ndarray | None = None
        self._owner: np.ndarray | None = None
        self._slots: list[np.ndarray] = []
        self._pool: ThreadPoolExecutor | None = None

    @property
    def nbytes(self) -> int:
        return 0 if self._buffer is None else self._buffer.nbytes

    def capture(self, model: keras.Model) -> dict[str, list[tuple[str, np.ndarray]]]:
        """A copy of the model's arrays in the buffers (valid until the next capture)."""
        groups = list(_groups(model))
        layout = [
            (group, name, (view.dtype.str, view.shape))
            for group, names, views in groups
            for name, view in zip(names, views, strict=True)
        ]
        sources = [view for _, _, views in groups for view in views]
        if layout != self._layout:
            self._allocate(layout, sources)
        self._copy(sources)
        captured: dict[str, list[tuple[str, np.ndarray]]] = {group: [] for group, _, _ in groups}
        for (group, name, _), slot in zip(self._layout, self._slots, strict=True):
            captured[group].append((name, slot))
        return captured

    def release(self) -> None:
        """Give the memory back (the end of a fit())."""
        self._layout, self._buffer, self._slots = [], None, []
        self._owner: np.ndarray | None = None
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def _allocate(self, layout, sources: list[np.ndarray]) -> None:
        self.release()
        total = sum(view.nbytes for view in sources)
        # Page-aligned, so that the writer can hand it to the disk directly
        # (O_DIRECT: checkpoint.durable); the slots follow one another.
        raw = np.empty(total + _PAGE, dtype=np.uint8)
        skip = -raw.__array_interface__["data"][0] % _PAGE
        self._owner = raw
        self._buffer = raw[skip : skip + total]
        offset = 0
        for view in sources:
            raw = self._buffer[offset : offset + view.nbytes]
            self._slots.append(raw.view(view.dtype).reshape(view.shape))
            offset += view.nbytes
        self._layout = layout

    def _copy(self, sources: list[np.ndarray]) -> None:
        pairs = [
            (slot.reshape(-1).view(np.uint8), np.ascontiguousarray(view).reshape(-1).view(np.uint8))
            for slot, view in zip(self._slots, sources, strict=True)
        ]
        ranges = _split(pairs, self._threads)
        if len(ranges) == 1:
            _copy_range(ranges[0])
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="ftharness-snapshot")
        for future in [self._pool.submit(_copy_range, part) for part in ranges]:
            future.result()


_PAGE = 4096
# Memory bandwidth is saturated by a few threads; more only compete with others.
_MAX_COPY_THREADS = 4
# Below this a copy is not worth splitting between threads.
_SPLIT_BYTES = 16 * 1024 * 1024


def _split(pairs, parts: int) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """`pairs` (destination, source byte arrays) cut into `parts` equal byte ranges."""
    total = sum(len(source) for _, source in pairs)
    if parts == 1 or total < _SPLIT_BYTES:
        return [pairs]
    share = -(-total // parts)
    ranges: list[list[tuple[np.ndarray, np.ndarray]]] = [[]]
    room = share
    for destination, source in pairs:
        start = 0
        while start < len(source):
            take = min(room, len(source) - start)
            ranges[-1].append((destination[start : start + take], source[start : start + take]))
            start += take
            room -= take
            if room == 0:  # the next range (the last one takes any rounding rest)
                ranges.append([])
                room = share if len(ranges) < parts else total
    return [part for part in ranges if part]


def _copy_range(pairs) -> None:
    for destination, source in pairs:
        np.copyto(destination, source)


def check_compatible(
    variables: list, values: list[tuple[str, np.ndarray]], location: str, what: str
) -> None:
    """Refuse, before touching any variable, a checkpoint of another model."""
    if len(variables) != len(values):
        raise IncompatibleCheckpointError(
            f"checkpoint {location} was written by another model: it has {len(values)} "
            f"{what} variables, this model {len(variables)}"
        )
    for variable, (name, value) in zip(variables, values, strict=True):
        shape = tuple(variable.shape)
        dtype = np.dtype(variable.dtype).name
        if shape != value.shape or dtype != value.dtype.name:
            raise IncompatibleCheckpointError(
                f"checkpoint {location} was written by another model: {variable.path} is "
                f"{dtype}{list(shape)} here, {name} is {value.dtype.name}{list(value.shape)} "
                "in the checkpoint"
            )


def assign(variables: list, values: list[tuple[str, np.ndarray]]) -> None:
    for variable, (_, value) in zip(variables, values, strict=True):
        variable.assign(value)
