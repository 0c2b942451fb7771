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

from ftharness import strict_json

FORMAT = "ftharness-checkpoint"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
CHECKPOINT_PREFIX = "ckpt-"
_NAME_PATTERN = re.compile(r"^ckpt-(\d{12})$")

# Bounds on what a manifest may say; anything beyond them is corruption.
# They are far beyond any real checkpoint, and small enough that no
# arithmetic or allocation on them can fail.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_FILES = 100_000
MAX_FILE_NAME = 255  # NAME_MAX on Linux
MAX_FILE_SIZE = 2**50  # 1 PiB
MAX_STEP = 10**12 - 1  # the 12 digits of a checkpoint's directory name
MAX_COUNT = 2**62
MAX_STRING = 1024
MAX_TIME = 1e11  # Unix seconds: the year 5138
_FILE_NAME_PATTERN = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_FILE_NAME}}}")


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
    def from_json(cls, text: str | bytes, location: str) -> Manifest:
        """Parse a manifest read back from storage: untrusted input.

        Everything is checked before it is used: file names are single plain
        path components (see `check_file_name`), every number is an integer
        in range (or a finite time), strings are bounded, no key appears
        twice, and the whole is at most MAX_MANIFEST_BYTES. Anything else
        raises CorruptCheckpointError: the checkpoint is never loaded.
        """
        try:
            record = strict_json.loads(text, MAX_MANIFEST_BYTES)
            return cls._from_record(record)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise CorruptCheckpointError(location, f"unreadable manifest ({error})") from None

    @classmethod
    def _from_record(cls, record: object) -> Manifest:
        record = _mapping(record, "the manifest")
        if record.get("format") != FORMAT:
            raise ValueError(f"not an {FORMAT} manifest")
        version = _integer(record, "format_version", 1, 2**31)
        if version > FORMAT_VERSION:
            raise ValueError(
                f"format version {version} is newer than this ftharness reads "
                f"({FORMAT_VERSION}); upgrade ftharness"
            )
        listed = _mapping(record["files"], "files")
        if len(listed) > MAX_FILES:
            raise ValueError(f"{len(listed)} files listed, more than {MAX_FILES}")
        files = {}
        for name, entry in listed.items():
            check_file_name(name)
            entry = _mapping(entry, f"files[{name}]")
            files[name] = FileEntry(
                size=_integer(entry, "size", 0, MAX_FILE_SIZE),
                crc32=_integer(entry, "crc32", 0, 2**32 - 1),
            )
        writer = _mapping(record["writer"], "writer")
        return cls(
            step=_integer(record, "step", 0, MAX_STEP),
            epoch=_integer(record, "epoch", 0, MAX_COUNT),
            batch=_integer(record, "batch", 0, MAX_COUNT),
            files=files,
            writer=WriterInfo(
                host=_string(writer, "host"),
                pid=_integer(writer, "pid", 0, 2**31),
                run_id=_string(writer, "run_id"),
            ),
            created=_time(record, "created"),
            format_version=version,
        )


def check_file_name(name: object) -> str:
    """`name` if it is one plain path component ftharness could have written.

    Names come from the manifest, which whoever can write the bucket writes:
    `../../.bashrc`, `/dev/zero`, `a\x00b` or a name the terminal would
    interpret must never reach `open()`. Raises ValueError otherwise.
    """
    if not isinstance(name, str) or not _FILE_NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"file name {name!r:.80} is not one plain path component "
            f"([A-Za-z0-9._-], at most {MAX_FILE_NAME} characters)"
        )
    if name in (".", "..", MANIFEST_NAME):
        raise ValueError(f"file name {name!r} is reserved")
    return name


def _mapping(value: object, what: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not an object")
    return value


def _integer(record: dict, key: str, low: int, high: int) -> int:
    value = record[key]
    # bool is an int in Python, and JSON's true is not a count.
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{key} must be an integer in [{low}, {high}], got {value!r:.40}")
    return value


def _time(record: dict, key: str) -> float:
    value = record[key]
    if type(value) not in (int, float) or not 0 <= value <= MAX_TIME:
        raise ValueError(f"{key} must be a Unix time in [0, {MAX_TIME:.0f}], got {value!r:.40}")
    return float(value)


def _string(record: dict, key: str) -> str:
    value = record[key]
    if not isinstance(value, str) or len(value) > MAX_STRING:
        raise ValueError(f"{key} must be a string of at most {MAX_STRING} characters")
    return value
