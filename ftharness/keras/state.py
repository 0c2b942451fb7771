"""Capture and restore the whole training state of a Keras model.

Arrays (model variables, optimizer slots and step, metric accumulators, the
seed generators' states, arrays of callbacks' states) go to one binary file;
everything else (position in training and in the data, RNG states, other
callbacks' states) is plain JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import keras
import numpy as np

from ftharness.checkpoint import arrays
from ftharness.checkpoint.arrays import ArrayEntry
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


@dataclass
class Snapshot:
    """The training state copied to host memory; safe to write in the background."""

    position: Position
    arrays: dict[str, list[tuple[str, np.ndarray]]]
    json_state: dict = field(default_factory=dict)

    def files(self) -> dict[str, list]:
        index = {}
        chunks = []
        offset = 0
        for group, named in self.arrays.items():
            entries, group_chunks = arrays.pack(named)
            index[group] = [
                {**entry.to_json(), "offset": entry.offset + offset} for entry in entries
            ]
            offset += sum(entry.nbytes for entry in entries)
            chunks.extend(group_chunks)
        state = {
            "format_version": STATE_FORMAT_VERSION,
            "position": vars(self.position),
            "arrays": index,
            **self.json_state,
        }
        return {ARRAYS_FILE: chunks, STATE_FILE: [json.dumps(state).encode()]}


def training_variables(model: keras.Model) -> list:
    variables = list(model.variables)
    if model.optimizer is not None:
        variables += list(model.optimizer.variables)
    return variables


def metric_variables(model: keras.Model) -> list:
    return list(getattr(model, "metrics_variables", []))


def named(variables: list) -> list[tuple[str, object]]:
    return [(variable.path, variable) for variable in variables]


def capture_arrays(model: keras.Model) -> dict[str, list[tuple[str, np.ndarray]]]:
    return {
        GROUP_TRAINING: [
            (name, np.array(v.numpy())) for name, v in named(training_variables(model))
        ],
        GROUP_METRICS: [(name, np.array(v.numpy())) for name, v in named(metric_variables(model))],
    }


@dataclass
class LoadedState:
    position: Position
    json_state: dict
    arrays: dict[str, list[tuple[ArrayEntry, np.ndarray]]]


def parse(files: dict[str, bytearray], location: str) -> LoadedState:
    try:
        state = json.loads(files[STATE_FILE])
        version = int(state["format_version"])
        if version not in READABLE_FORMAT_VERSIONS:
            raise IncompatibleCheckpointError(
                f"checkpoint {location} has state format {version}; this ftharness reads "
                f"{sorted(READABLE_FORMAT_VERSIONS)}"
            )
        position = Position(**state.pop("position"))
        index = {
            group: [ArrayEntry.from_json(record) for record in records]
            for group, records in state.pop("arrays").items()
        }
    except (KeyError, ValueError, TypeError) as error:
        raise IncompatibleCheckpointError(
            f"checkpoint {location} is not a Keras training state ({error})"
        ) from None
    buffer = files[ARRAYS_FILE]
    loaded = {
        group: list(zip(entries, arrays.unpack(entries, buffer), strict=True))
        for group, entries in index.items()
    }
    return LoadedState(position, state, loaded)


def check_compatible(variables: list, entries: list[ArrayEntry], location: str, what: str) -> None:
    """Refuse, before touching any variable, a checkpoint of another model."""
    if len(variables) != len(entries):
        raise IncompatibleCheckpointError(
            f"checkpoint {location} was written by another model: it has {len(entries)} "
            f"{what} variables, this model {len(variables)}"
        )
    for variable, entry in zip(variables, entries, strict=True):
        shape = tuple(variable.shape)
        dtype = np.dtype(variable.dtype).name
        if shape != entry.shape or dtype != entry.dtype:
            raise IncompatibleCheckpointError(
                f"checkpoint {location} was written by another model: {variable.path} is "
                f"{dtype}{list(shape)} here, {entry.name} is {entry.dtype}{list(entry.shape)} "
                "in the checkpoint"
            )


def assign(variables: list, values: list[tuple[ArrayEntry, np.ndarray]]) -> None:
    for variable, (_, value) in zip(variables, values, strict=True):
        variable.assign(value)
