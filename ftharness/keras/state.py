"""Capture and restore the whole training state of a Keras model.

Arrays (model variables, optimizer slots and step, metric accumulators, the
seed generators' states, arrays of callbacks' states) go to one binary file;
everything else (position in training and in the data, RNG states, other
callbacks' states) is plain JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import keras
import numpy as np

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

    Built on the training thread (`capture` in the callback: the arrays are
    real copies, the rest plain JSON), so it is safe to write in the
    background; read back with `from_files`, which also reads format 1.
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


def capture_arrays(model: keras.Model) -> dict[str, list[tuple[str, np.ndarray]]]:
    return {
        GROUP_TRAINING: [
            (name, np.array(v.numpy())) for name, v in named(training_variables(model))
        ],
        GROUP_METRICS: [(name, np.array(v.numpy())) for name, v in named(metric_variables(model))],
    }


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
