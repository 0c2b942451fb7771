"""A backup as the inspection commands see it: a checkpoint store, its records, its lock.

`LocalBackup` (a path or a file:// URL) is a `LocalCheckpointStore`,
`RemoteBackup` (gs://, s3://, other fsspec URLs) a `RemoteCheckpointStore`:
the commands read checkpoints through the stores' own `CheckpointStore`
protocol. What the two add is what inspection alone needs: the run's event
records, and the writer's lock (the directory lock, or the prefix's lease).
"""

from __future__ import annotations

import json
import os
import posixpath
import time
from pathlib import Path
from typing import Protocol

from ftharness.checkpoint.layout import EVENTS_DIR
from ftharness.checkpoint.lease import LeaseHeldError, RemoteLease
from ftharness.checkpoint.local import LocalCheckpointStore
from ftharness.checkpoint.lock import LOCK_FILE_NAME, DirectoryLock, DirectoryLockedError
from ftharness.checkpoint.remote import RemoteCheckpointStore
from ftharness.checkpoint.safe_read import (
    NotRegularFileError,
    TooLargeError,
    read_regular,
    regular_object_size,
)
from ftharness.checkpoint.store import CheckpointStore, RefT
from ftharness.config import is_local_url, local_path
from ftharness.events import MAX_RECORD_BYTES
from ftharness.redact import describe_error, redact_url

__all__ = [
    "BackupError",
    "BackupReader",
    "BackupUnreachableError",
    "LocalBackup",
    "RefT",
    "RemoteBackup",
    "open_backup",
]


class BackupError(Exception):
    """The URL names no backup this version can read (a usage error, 64)."""


class BackupUnreachableError(BackupError):
    """The URL names a store that cannot be reached now (73, not a usage error)."""


class BackupReader(CheckpointStore[RefT], Protocol[RefT]):
    """A checkpoint store with the run's records beside it."""

    def event_files(self) -> list[tuple[str, bytes]]:
        """The run's event records, as (name, content)."""
        ...


class LocalBackup(LocalCheckpointStore):
    """A backup in a local directory (a path or a file:// URL)."""

    def __init__(self, url: str, directory: Path) -> None:
        super().__init__(directory)
        self.url = url

    def event_files(self) -> list[tuple[str, bytes]]:
        directory = self.directory / EVENTS_DIR
        try:
            # Dot names are records being replaced (`.<name>.tmp-<pid>`).
            paths = sorted(p for p in directory.glob("*.json") if not p.name.startswith("."))
        except OSError:
            return []
        files = []
        for path in paths:
            try:
                files.append((path.name, read_regular(directory, path.name, MAX_RECORD_BYTES)))
            except FileNotFoundError:
                continue  # replaced or removed since the listing
            except (NotRegularFileError, TooLargeError):
                files.append((path.name, b""))  # never read; reported as a record with no content
        return files

    # -- writing, for gc -----------------------------------------------------------

    def lock(self, role: str) -> DirectoryLock:
        """The directory's writer lock; raises DirectoryLockedError naming the holder."""
        return DirectoryLock.acquire(self.directory, run_id=f"ftharness-{role}", role=role)

    def live_holder(self) -> str | None:
        """Who holds the directory's lock, found without taking it; None if nobody.

        Taking the lock to find out would, for that instant, make a run that
        starts fail with 75. Linux lists every flock in /proc/locks (the
        taker's pid, the file's device and inode); without it, the holder the
        lock file names is taken to hold it while its process is alive.
        """
        path = self.directory / LOCK_FILE_NAME
        try:
            holder = json.loads(path.read_text() or "{}")
            pid = int(holder["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            holder, pid = {}, None
        held = _flock_listed(path, pid)
        if held is None:
            held = pid is not None and _alive(pid)
        if not held:
            return None
        if pid is None:
            return "holder unknown"
        role, host, run_id = (
            holder.get("role", "run"),
            holder.get("host", "?"),
            holder.get("run_id"),
        )
        return f"{role} pid {pid} on host {host}, run {run_id}"


def _flock_listed(path: Path, holder_pid: int | None) -> bool | None:
    """Whether /proc/locks lists a flock on `path`; None when it cannot be read."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return False  # never locked here
    except OSError:
        return None
    try:
        table = Path("/proc/locks").read_text()
    except OSError:
        return None
    exact = f"{os.major(status.st_dev):02x}:{os.minor(status.st_dev):02x}:{status.st_ino}"
    for line in table.splitlines():
        # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:2147410 0 EOF"; waiters add "->".
        fields = line.replace("->", "").split()
        if "FLOCK" not in fields or len(fields) < 6:
            continue
        pid, file_id = fields[4], fields[5]
        if file_id == exact:
            return True
        # Overlay filesystems report another device to stat than to /proc/locks:
        # the same inode taken by the pid the lock file names is the same lock.
        if file_id.endswith(f":{status.st_ino}") and pid == str(holder_pid):
            return True
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, someone else's
    return True


def open_backup(url: str, storage_options: dict | None = None) -> LocalBackup | RemoteBackup:
    """The backup at `url`; raises BackupError for what this version cannot read."""
    if not is_local_url(url):
        try:
            return RemoteBackup(url, storage_options)
        except OSError as error:  # ftp:// and sftp:// connect at once: a refused connection
            raise BackupUnreachableError(
                f"{redact_url(url)} is not readable: {describe_error(error)}"
            ) from None
        except Exception as error:  # unknown protocol, missing gcsfs/s3fs, bad options
            raise BackupError(f"{redact_url(url)}: {describe_error(error)}") from None
    directory = local_path(url)
    if not directory.is_dir():
        raise BackupError(f"{url}: no such backup directory")
    return LocalBackup(url, directory)


class RemoteBackup(RemoteCheckpointStore):
    """A backup under an fsspec URL; the run's lease takes the place of the lock."""

    def event_files(self) -> list[tuple[str, bytes]]:
        pattern = self.path(*EVENTS_DIR.parts, "*.json")
        self.fs.invalidate_cache(self.path(*EVENTS_DIR.parts))
        files = []
        for path in sorted(self.fs.glob(pattern)):
            try:
                regular_object_size(self.fs.info(path))
                content = self.fs.cat_file(path, start=0, end=MAX_RECORD_BYTES + 1)
            except FileNotFoundError:
                continue
            except NotRegularFileError:
                content = b""  # a FIFO or device on a file:// store: never read
            files.append((posixpath.basename(path), content))
        return files

    # -- writing, for gc -----------------------------------------------------------

    def lock(self, role: str) -> RemoteLease:
        """The prefix's lease; raises DirectoryLockedError naming a live holder."""
        lease = RemoteLease(self.fs, self.root, run_id=f"ftharness-{role}", ttl=60)
        try:
            lease.acquire()
        except LeaseHeldError as error:
            raise DirectoryLockedError(self.url, error.holder) from None
        return lease

    def live_holder(self) -> str | None:
        record = RemoteLease(self.fs, self.root, run_id="ftharness-ls").current()
        now = time.time()
        return record.describe(now) if record is not None and record.live(now) else None
