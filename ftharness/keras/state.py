"""Capture and restore the whole training state of a Keras model.

Arrays (model variables, optimizer slots and step, metric accumulators, the
seed generators' states, arrays of callbacks' states) go to one binary file;
everything else (position in training and in the data, RNG states, other
callbacks' states) is plain JSON. Under a tf.distribute strategy each
sync-on-read variable (a metric accumulator) is saved a second time, replica
by replica (`replica_parts`), so that a resume restores each replica's own.
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

from ftharness import strict_json
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
# state.json holds positions, RNG states and the callbacks' own states (kilobytes to
# a few megabytes for a long History); anything near this is not ours.
MAX_STATE_BYTES = 64 * 1024 * 1024

# Arrays are grouped by when they are restored: model and optimizer at
# on_train_begin; metrics just before the first train step of a mid-epoch
# resume (fit resets them at epoch begin); callbacks' arrays with their JSON
# state (groups "callback.N").
GROUP_TRAINING = "training"
GROUP_METRICS = "metrics"
# Group "<group>.replicas": under a tf.distribute strategy, every replica's own
# component of each of the group's sync-on-read variables (see `replica_parts`).
REPLICAS_SUFFIX = ".replicas"


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
    # group -> [(name, value)]: GROUP_TRAINING, GROUP_METRICS, "callback.N", and
    # "<group>.replicas" (REPLICAS_SUFFIX)
    arrays: dict[str, list[tuple[str, np.ndarray]]] = field(default_factory=dict)
    # The replicas the training ran on (`replica_count`); None: not recorded
    # (written before ftharness saved per-replica parts).
    replicas: int | None = None

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
            "replicas": self.replicas,
        }
        return {ARRAYS_FILE: chunks, STATE_FILE: [json.dumps(record).encode()]}

    @classmethod
    def from_files(cls, files: Mapping[str, bytes | bytearray], location: str) -> TrainingState:
        """Parse a checkpoint's files (untrusted input): IncompatibleCheckpointError if they
        are not a Keras training state of a readable format."""
        try:
            record = strict_json.loads(bytes(files[STATE_FILE]), MAX_STATE_BYTES)
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
                replicas=_replicas(record.get("replicas")),
            )
            buffer = files[ARRAYS_FILE]
            loaded = {
                group: [
                    (entry.name, value)
                    for entry, value in zip(entries, arrays.unpack(entries, buffer), strict=True)
                ]
                for group, entries in index.items()
            }
            _check_replica_groups(loaded, state.replicas)
        except (KeyError, ValueError, TypeError) as error:
            raise IncompatibleCheckpointError(
                f"checkpoint {location} is not a Keras training state ({error})"
            ) from None
        return replace(state, arrays=loaded)


def _replicas(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"replicas is {value!r}, not a positive integer")
    return value


def _check_replica_groups(loaded: dict, replicas: int | None) -> None:
    """A "<group>.replicas" group is `replicas` parts of each of its group's arrays, in
    order, each of that array's shape and dtype (ValueError if not: a damaged state)."""
    for group, parts in loaded.items():
        if not group.endswith(REPLICAS_SUFFIX):
            continue
        base = loaded.get(group.removesuffix(REPLICAS_SUFFIX))
        if base is None or replicas is None or replicas < 2:
            raise ValueError(f"{group} without its group or a count of replicas")
        if len(parts) != replicas * len(base):
            raise ValueError(
                f"{group} has {len(parts)} arrays, not {replicas} for each of {len(base)}"
            )
        for index, (name, part) in enumerate(parts):
            base_name, value = base[index // replicas]
            if part.shape != value.shape or part.dtype != value.dtype:
                raise ValueError(f"{group}: {name} is not shaped as {base_name}")


def training_variables(model: keras.Model) -> list:
    variables = list(model.variables)
    if model.optimizer is not None:
        variables += list(model.optimizer.variables)
    return variables


def metric_variables(model: keras.Model) -> list:
    return list(getattr(model, "metrics_variables", []))


def named(variables: list) -> list[tuple[str, object]]:
    return [(variable.path, variable) for variable in variables]


def replica_components(variable) -> list:
    """The per-replica components of a sync-on-read variable, in replica order.

    Under a tf.distribute strategy a metric accumulator is sync-on-read: one
    component per replica, and a read is their sum. Saved as that sum and
    assigned back, each component would get an even share of it (TensorFlow
    divides a SUM variable's assignment), and the resumed epoch would add its
    partial sums in another order than an uninterrupted run: so each
    component is saved and restored as itself. [] for any other variable.
    """
    value = getattr(variable, "value", None)
    if (
        not isinstance(value, tf.distribute.DistributedValues)
        or getattr(value, "synchronization", None) != tf.VariableSynchronization.ON_READ
    ):
        return []
    return list(value.distribute_strategy.experimental_local_results(value))


def replica_parts(variables: list) -> list[tuple[str, object]]:
    """Every component of every variable (`replica_components`), or [] unless all
    of `variables` are sync-on-read over the same number (2 or more) of replicas:
    a group is restored per replica whole, or not at all."""
    components = [replica_components(variable) for variable in variables]
    counts = {len(parts) for parts in components}
    if len(counts) != 1 or counts.pop() < 2:
        return []
    return [
        (f"{variable.path}/replica_{index}", part)
        for variable, parts in zip(variables, components, strict=True)
        for index, part in enumerate(parts)
    ]


def replica_count(model: keras.Model) -> int:
    """The replicas `model` trains on: its strategy's (1: a single device)."""
    strategy = getattr(model, "distribute_strategy", None)
    return int(getattr(strategy, "num_replicas_in_sync", 1))


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
        # A Keras variable holds TensorFlow's as `value`; a replica's component is one.
        value = variable
        if not isinstance(variable, tf.Variable):
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
        parts = replica_parts(variables)
        if parts:
            names, components = zip(*parts, strict=True)
            yield group + REPLICAS_SUFFIX, list(names), host_views(list(components))


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


def same_layout(variables: list, values: list[tuple[str, np.ndarray]]) -> bool:
    """Whether `values` are, one for one, of `variables`' shapes and dtypes."""
    return [(tuple(v.shape), np.dtype(v.dtype).name) for v in variables] == [
        (value.shape, value.dtype.name) for _, value in values
    ]


def assign(variables: list, values: list[tuple[str, np.ndarray]]) -> None:
    for variable, (_, value) in zip(variables, values, strict=True):
        variable.assign(value)


def assign_group(variables: list, restored: TrainingState, group: str) -> str | None:
    """Assign `group`'s values (checked compatible) to `variables`, replica by replica
    where the checkpoint has each replica's part; else why not, in one clause.

    The reason is said when the checkpoint's sync-on-read values can only be
    restored from their sum, split evenly over the replicas (which is what
    TensorFlow does with an assigned SUM variable): it was written without
    per-replica parts (an older ftharness, a single device) or on another
    number of replicas. The variables' values are then right, but a resumed
    epoch adds its partial sums in another order than an uninterrupted run:
    metrics computed from them may differ in their last bits.
    """
    values = restored.arrays[group]
    components = replica_parts(variables)
    saved = restored.arrays.get(group + REPLICAS_SUFFIX)
    replicas_now = len(components) // len(variables) if components else 1
    if components and saved is not None and len(saved) == len(components):
        for (_, component), (_, value) in zip(components, saved, strict=True):
            component.assign(value)
        return None
    assign(variables, values)
    if saved is None and not components:
        return None  # nothing of this group is per replica, then or now
    replicas_then = restored.replicas or 1
    if restored.replicas is None:
        written = "without per-replica parts (by an older ftharness)"
    elif replicas_then == replicas_now:
        written = f"without per-replica parts of its {group}"
    else:
        written = f"on {replicas_then} replica(s)"
    return (
        f"the checkpoint was written {written} and this training runs on {replicas_now}: "
        f"its {group} sync-on-read variables are restored from their sum split evenly over "
        "the replicas, so what is computed from them may differ in its last bits"
    )
