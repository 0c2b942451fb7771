"""One writer per local checkpoint directory.

The lock is a kernel `flock` on `<dir>/.ftharness.lock`, taken through
filelock's `lock_descriptor` on a descriptor we own. Owning the descriptor is
the point: the supervisor hands it to its worker (inherited across exec), so
the worker writes under the supervisor's lock, and the lock outlives the
supervisor for as long as an orphaned worker still holds it. The kernel drops
it when the last holder dies, even by SIGKILL, so a crash never leaves a stale
lock behind.

The holder writes who it is (host, pid, run id) into the lock file so that a
contender can name it in its error message.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import filelock

LOCK_FILE_NAME = ".ftharness.lock"


class DirectoryLockedError(RuntimeError):
    """Another process holds the directory's lock."""

    def __init__(self, directory: str, holder: str) -> None:
        super().__init__(f"{directory} is locked by another run ({holder})")
        self.directory = directory
        self.holder = holder

    def __reduce__(self):  # pickles across process boundaries
        return (type(self), (self.directory, self.holder))


@dataclass(frozen=True)
class LockHolder:
    host: str
    pid: int
    run_id: str
    role: str

    def describe(self) -> str:
        return f"{self.role} pid {self.pid} on host {self.host}, run {self.run_id}"


class DirectoryLock:
    """An exclusive, non-blocking lock on a checkpoint directory.

    Example::

        lock = DirectoryLock.acquire(Path("backups"), run_id="r1", role="supervisor")
        ...  # write checkpoints
        lock.release()
    """

    def __init__(self, directory: Path, fd: int) -> None:
        self.directory = directory
        self.fd = fd

    @classmethod
    def acquire(cls, directory: Path, *, run_id: str, role: str) -> DirectoryLock:
        path = directory / LOCK_FILE_NAME
        # No O_TRUNC: a contender that loses must not erase the holder's name.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if not filelock.lock_descriptor(fd, blocking=False):
                raise DirectoryLockedError(str(directory), _read_holder(path))
            holder = LockHolder(socket.gethostname(), os.getpid(), run_id, role)
            _write_holder(fd, holder)
        except BaseException:
            os.close(fd)
            raise
        return cls(directory, fd)

    @classmethod
    def inherited(cls, directory: Path, fd: int) -> DirectoryLock:
        """Adopt the lock a supervisor passed down as an open descriptor."""
        lock_path = directory / LOCK_FILE_NAME
        try:
            same_file = os.path.samestat(os.fstat(fd), os.stat(lock_path))
        except OSError:
            same_file = False
        if not same_file:
            raise ValueError(f"inherited descriptor {fd} is not the lock of {directory}")
        return cls(directory, fd)

    def make_inheritable(self) -> int:
        """Let a child process inherit the lock; returns the descriptor number."""
        os.set_inheritable(self.fd, True)
        return self.fd

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = -1


def _write_holder(fd: int, holder: LockHolder) -> None:
    record = {**holder.__dict__, "since": time.time()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)


def _read_holder(path: Path) -> str:
    try:
        record = json.loads(path.read_text() or "{}")
        return LockHolder(
            record["host"], int(record["pid"]), record["run_id"], record["role"]
        ).describe()
    except (OSError, ValueError, KeyError, TypeError):
        # The holder may be between taking the lock and writing its name.
        return "holder unknown"
