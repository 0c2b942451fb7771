"""Reading a backup: its checkpoints, their manifests and files, the run's records.

The inspection commands see a backup only through `BackupReader`. Local
paths and file:// URLs are served by `LocalBackup`, over `LocalCheckpointStore`;
gs://, s3:// and other fsspec URLs by `RemoteBackup`, over
`RemoteCheckpointStore`, where the run's lease takes the place of the lock.
"""

from __future__ import annotations

import json
import os
import posixpath
import time
from pathlib import Path
from typing import BinaryIO, Protocol, TypeVar

from ftharness.checkpoint.lease import LeaseHeldError, RemoteLease
from ftharness.checkpoint.local import CheckpointRef, LocalCheckpointStore
from ftharness.checkpoint.lock import LOCK_FILE_NAME, DirectoryLock, DirectoryLockedError
from ftharness.checkpoint.manifest import Manifest
from ftharness.checkpoint.remote import RemoteCheckpointStore, RemoteRef
from ftharness.checkpoint.safe_read import (
    NotRegularFileError,
    TooLargeError,
    open_regular,
    read_regular,
    regular_object_size,
)
from ftharness.config import is_local_url, local_path
from ftharness.events import EVENTS_DIR, MAX_RECORD_BYTES


class BackupError(Exception):
    """The URL names no backup this version can read (a usage error, 64)."""


class BackupUnreachableError(BackupError):
    """The URL names a store that cannot be reached now (73, not a usage error)."""


class CheckpointEntry(Protocol):
    """A committed checkpoint as a store lists it."""

    @property
    def name(self) -> str: ...

    @property
    def step(self) -> int: ...


RefT = TypeVar("RefT", bound=CheckpointEntry)


class BackupReader(Protocol[RefT]):
    """What the inspection commands need of a store; `RefT` is its checkpoint ref."""

    url: str

    def list_checkpoints(self) -> list[RefT]:
        """Committed checkpoints (a manifest exists), oldest first."""
        ...

    def read_manifest(self, ref: RefT) -> Manifest:
        """The manifest; raises `CorruptCheckpointError` when it does not parse."""
        ...

    def file_size(self, ref: RefT, file_name: str) -> int | None:
        """Size of one of its files, None when it is missing.

        Raises NotRegularFileError for a symlink, FIFO or device."""
        ...

    def open_file(self, ref: RefT, file_name: str) -> BinaryIO:
        """One of its files for reading; raises FileNotFoundError when missing,
        NotRegularFileError for a symlink, FIFO or device."""
        ...

    def event_files(self) -> list[tuple[str, bytes]]:
        """The run's event records, as (name, content)."""
        ...


class LocalBackup:
    """A backup in a local directory (a path or a file:// URL)."""

    def __init__(self, url: str, directory: Path) -> None:
        self.url = url
        self.directory = directory
        self.store = LocalCheckpointStore(directory)

    # -- BackupReader --------------------------------------------------------------

    def list_checkpoints(self) -> list[CheckpointRef]:
        return self.store.list_committed()

    def read_manifest(self, ref: CheckpointRef) -> Manifest:
        return self.store.read_manifest(ref)

    def file_size(self, ref: CheckpointRef, file_name: str) -> int | None:
        try:
            with open_regular(ref.path, file_name) as file:
                return os.fstat(file.fileno()).st_size
        except FileNotFoundError:
            return None

    def open_file(self, ref: CheckpointRef, file_name: str) -> BinaryIO:
        return open_regular(ref.path, file_name)

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

    def delete(self, ref: CheckpointRef) -> None:
        self.store.delete(ref)

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
                f"{url} is not readable: {type(error).__name__}: {str(error)[:200]}"
            ) from None
        except Exception as error:  # unknown protocol, missing gcsfs/s3fs, bad options
            raise BackupError(f"{url}: {type(error).__name__}: {str(error)[:200]}") from None
    directory = local_path(url)
    if not directory.is_dir():
        raise BackupError(f"{url}: no such backup directory")
    return LocalBackup(url, directory)


class RemoteBackup:
    """A backup in object storage (gs://, s3://) or any other fsspec URL."""

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        self.url = url
        self.store = RemoteCheckpointStore(url, storage_options)

    # -- BackupReader --------------------------------------------------------------

    def list_checkpoints(self) -> list[RemoteRef]:
        return self.store.list_committed()

    def read_manifest(self, ref: RemoteRef) -> Manifest:
        return self.store.read_manifest(ref)

    def file_size(self, ref: RemoteRef, file_name: str) -> int | None:
        try:
            return regular_object_size(self.store.fs.info(posixpath.join(ref.path, file_name)))
        except FileNotFoundError:
            return None

    def open_file(self, ref: RemoteRef, file_name: str) -> BinaryIO:
        return self.store.fs.open(posixpath.join(ref.path, file_name), "rb")

    def event_files(self) -> list[tuple[str, bytes]]:
        pattern = self.store.path(*EVENTS_DIR.parts, "*.json")
        self.store.fs.invalidate_cache(self.store.path(*EVENTS_DIR.parts))
        files = []
        for path in sorted(self.store.fs.glob(pattern)):
            try:
                regular_object_size(self.store.fs.info(path))
                content = self.store.fs.cat_file(path, start=0, end=MAX_RECORD_BYTES + 1)
            except FileNotFoundError:
                continue
            except NotRegularFileError:
                content = b""  # a FIFO or device on a file:// store: never read
            files.append((posixpath.basename(path), content))
        return files

    # -- writing, for gc -----------------------------------------------------------

    def lock(self, role: str) -> RemoteLease:
        """The prefix's lease; raises DirectoryLockedError naming a live holder."""
        lease = RemoteLease(self.store.fs, self.store.root, run_id=f"ftharness-{role}", ttl=60)
        try:
            lease.acquire()
        except LeaseHeldError as error:
            raise DirectoryLockedError(self.url, error.holder) from None
        return lease

    def delete(self, ref: RemoteRef) -> None:
        self.store.delete(ref)

    def live_holder(self) -> str | None:
        record = RemoteLease(self.store.fs, self.store.root, run_id="ftharness-ls").current()
        now = time.time()
        return record.describe(now) if record is not None and record.live(now) else None
