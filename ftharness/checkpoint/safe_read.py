"""Reading a checkpoint's files as untrusted input: regular files only, bounded.

A checkpoint directory can hold anything its writer put there, and the
writer may be hostile (a shared bucket, a copied backup). A FIFO blocks the
reader forever at `open()`; a symlink to `/dev/zero` reads forever; a
symlink to `~/.ssh/id_rsa` reads outside the backup. So a checkpoint's file
is opened relative to its directory with O_NOFOLLOW (no symlink as the last
component) and O_NONBLOCK (a FIFO or device cannot block the open), then
`fstat` must say it is a regular file, and no more bytes are ever read than
the caller allows. The directory itself is opened the same way: a
checkpoint directory that is a symlink is refused too.

Example::

    with open_regular(checkpoint_dir, "arrays.bin") as file:
        size = os.fstat(file.fileno()).st_size
    data = read_regular(checkpoint_dir, "manifest.json", limit=16 * 2**20)
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIRECTORY_FLAGS = _OPEN_FLAGS | os.O_DIRECTORY


class NotRegularFileError(ValueError):
    """A checkpoint's entry is a symlink, FIFO, device or directory: never read.

    A ValueError, not an OSError: it is what the checkpoint contains, not a
    failure to read it (an I/O error may go away on a retry; this will not).
    """

    def __init__(self, path: str, kind: str, expected: str = "a regular file") -> None:
        super().__init__(f"{os.path.basename(path)} is {kind}, not {expected}")
        self.path = path
        self.kind = kind
        self.expected = expected

    def __reduce__(self):
        return (type(self), (self.path, self.kind, self.expected))


class TooLargeError(ValueError):
    """A file holds more bytes than its reader allows (a manifest of gigabytes)."""

    def __init__(self, path: str, size: int, limit: int) -> None:
        super().__init__(f"{os.path.basename(path)} has {size} bytes, more than {limit}")
        self.path = path
        self.size = size
        self.limit = limit

    def __reduce__(self):
        return (type(self), (self.path, self.size, self.limit))


def open_regular(directory: Path, name: str) -> BinaryIO:
    """`directory/name` opened for reading, if both are what they claim to be.

    `name` must be one path component. Raises NotRegularFileError for a
    symlink, FIFO, socket, device or directory, FileNotFoundError when it is
    missing, other OSErrors as the system reports them.
    """
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"{name!r:.80} is not one path component")
    try:
        directory_fd = os.open(directory, _DIRECTORY_FLAGS)
    except OSError as error:
        # O_NOFOLLOW | O_DIRECTORY on a symlink: ELOOP or ENOTDIR, by kernel.
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            kind = "a symlink or a file"
            raise NotRegularFileError(str(directory), kind, "a directory") from None
        raise
    try:
        fd = _open(name, directory_fd, str(directory / name))
    finally:
        os.close(directory_fd)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(str(directory / name), _kind(mode))
        # Blocking again for the reads: on a regular file the flag means nothing
        # anyway, but a caller's read loop must never see EAGAIN.
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def read_regular(directory: Path, name: str, limit: int) -> bytes:
    """The whole of `directory/name`, a regular file of at most `limit` bytes."""
    with open_regular(directory, name) as file:
        size = os.fstat(file.fileno()).st_size
        if size > limit:
            raise TooLargeError(str(directory / name), size, limit)
        data = file.read(limit + 1)  # +1: a file growing as we read is too large too
    if len(data) > limit:
        raise TooLargeError(str(directory / name), len(data), limit)
    return data


def regular_object_size(info: dict) -> int:
    """The size of a store object from fsspec's `info()`, if it is a plain file.

    On a file:// store an "object" can be a FIFO, a device or a symlink
    (fsspec reports type "other", or `islink`); object stores only have files.
    """
    if info.get("islink"):
        raise NotRegularFileError(str(info.get("name", "?")), "a symlink")
    if info.get("type") != "file":
        raise NotRegularFileError(str(info.get("name", "?")), f"of type {info.get('type')!r}")
    size = info.get("size")
    if type(size) is not int or size < 0:
        raise NotRegularFileError(str(info.get("name", "?")), f"of size {size!r}")
    return size


def _open(name: str, directory_fd: int, path: str) -> int:
    try:
        return os.open(name, _OPEN_FLAGS, dir_fd=directory_fd)
    except OSError as error:
        if error.errno == errno.ELOOP:  # O_NOFOLLOW on a symlink
            raise NotRegularFileError(path, "a symlink") from None
        if error.errno in (errno.ENXIO, errno.ENODEV):  # a socket, a device without a driver
            raise NotRegularFileError(path, "a special file") from None
        raise


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"
