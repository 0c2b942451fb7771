"""The checkpoint manifest: what a committed checkpoint is.

A checkpoint is one directory, `ckpt-<step, 12 digits>/`, holding data files
and `manifest.json`. The manifest lists every data file with its size and
CRC-32, and says where in training the checkpoint was taken. A checkpoint
exists if and only if its manifest exists and every file it lists verifies.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from dataclasses import asdict, dataclass, field

FORMAT = "ftharness-checkpoint"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
CHECKPOINT_PREFIX = "ckpt-"
_NAME_PATTERN = re.compile(r"^ckpt-(\d{12})$")


def checkpoint_name(step: int) -> str:
    """Names sort by step: `ckpt-000000012345`."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return f"{CHECKPOINT_PREFIX}{step:012d}"


def step_of(name: str) -> int | None:
    """The step a checkpoint directory name encodes, or None for other names."""
    match = _NAME_PATTERN.match(name)
    return int(match.group(1)) if match else None


class CheckpointError(Exception):
    """Base of the checkpoint errors."""


class CorruptCheckpointError(CheckpointError):
    """A committed checkpoint does not verify; it is never loaded."""

    def __init__(self, location: str, reason: str) -> None:
        super().__init__(f"checkpoint {location} is corrupt: {reason}")
        self.location = location
        self.reason = reason

    def __reduce__(self):
        return (type(self), (self.location, self.reason))


@dataclass(frozen=True)
class FileEntry:
    size: int
    crc32: int


@dataclass(frozen=True)
class WriterInfo:
    host: str
    pid: int
    run_id: str

    @classmethod
    def current(cls, run_id: str) -> WriterInfo:
        return cls(host=socket.gethostname(), pid=os.getpid(), run_id=run_id)


@dataclass(frozen=True)
class Manifest:
    step: int
    epoch: int
    batch: int
    files: dict[str, FileEntry]
    writer: WriterInfo
    created: float = field(default_factory=time.time)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        record = {"format": FORMAT, **asdict(self)}
        return json.dumps(record, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, location: str) -> Manifest:
        try:
            record = json.loads(text)
            if record.get("format") != FORMAT:
                raise ValueError(f"not an {FORMAT} manifest")
            version = int(record["format_version"])
            if version > FORMAT_VERSION:
                raise ValueError(
                    f"format version {version} is newer than this ftharness reads "
                    f"({FORMAT_VERSION}); upgrade ftharness"
                )
            files = {
                str(name): FileEntry(int(entry["size"]), int(entry["crc32"]))
                for name, entry in record["files"].items()
            }
            writer = WriterInfo(**record["writer"])
            return cls(
                step=int(record["step"]),
                epoch=int(record["epoch"]),
                batch=int(record["batch"]),
                files=files,
                writer=writer,
                created=float(record["created"]),
                format_version=version,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise CorruptCheckpointError(location, f"unreadable manifest ({error})") from None
