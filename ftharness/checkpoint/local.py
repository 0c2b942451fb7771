"""Committed checkpoints in a local directory: list, commit, load, retain.

Commit protocol (the only place a checkpoint becomes visible):
1. write every data file into a temporary sibling `.tmp-ckpt-...`, fsync each;
2. write `manifest.json` last, fsync it, fsync the temporary directory;
3. rename the temporary directory to `ckpt-<step>` and fsync the parent.
A crash before 3 leaves only a `.tmp-` directory, which readers ignore and the
next writer removes. Deletion runs the other way round: rename away first, so
a half-deleted checkpoint is never mistaken for a committed one.

A little over 400 lines: the commit, the verified read (bounded, regular
files only, I/O errors told apart from corruption) and the removal of a
finished backup each need their order spelled out, and they belong together
because they must agree on the same names and the same lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ftharness.checkpoint import store as stores
from ftharness.checkpoint.checksum import crc32
from ftharness.checkpoint.durable import write_durable
from ftharness.checkpoint.layout import (
    DELETE_ON_SUCCESS_MARKER,
    QUARANTINE_PREFIX,
    STATE_DIR,
    TEMPORARY_PREFIX,
)
from ftharness.checkpoint.lock import LOCK_FILE_NAME
from ftharness.checkpoint.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    CorruptCheckpointError,
    FileEntry,
    Manifest,
    WriterInfo,
    check_file_name,
    checkpoint_name,
    step_of,
)
from ftharness.checkpoint.retry import LOCAL_READ_SECONDS, read_or_io_error
from ftharness.checkpoint.safe_read import (
    NotRegularFileError,
    TooLargeError,
    open_regular,
    read_regular,
)

log = logging.getLogger("ftharness.checkpoint")

__all__ = [
    "DELETE_ON_SUCCESS_MARKER",
    "QUARANTINE_PREFIX",
    "TEMPORARY_PREFIX",
    "CheckpointRef",
    "LocalCheckpointStore",
]

_READ_CHUNK = 16 * 1024 * 1024


@dataclass(frozen=True)
class CheckpointRef:
    """A committed checkpoint directory (its manifest not yet verified)."""

    name: str
    step: int
    path: Path


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint whose every file was read and verified against its manifest."""

    ref: CheckpointRef
    manifest: Manifest
    files: dict[str, bytearray]


class LocalCheckpointStore:
    """The committed checkpoints under one local directory.

    The store assumes its caller holds the directory's lock (see
    `checkpoint.lock`) before it writes, deletes or cleans up.

    Example::

        store = LocalCheckpointStore(Path("backups"))
        ref = store.commit(step=50, epoch=0, batch=49, files={"state.json": [b"{}"]},
                           writer=WriterInfo.current("run-1"))
        loaded = store.load(ref)
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.url = str(directory)
        # Checkpoints this object committed from bytes it checksummed while
        # writing them: retention need not read them back to trust them.
        self._committed_here: set[str] = set()

    # -- reading -----------------------------------------------------------

    def list_committed(self) -> list[CheckpointRef]:
        """Directories that carry a manifest, oldest first."""
        refs = []
        try:
            entries = _read_local_entries(self.directory)
        except FileNotFoundError:
            return []
        for entry in entries:
            step = step_of(entry.name)
            if step is None or not entry.is_dir():
                continue
            if os.path.exists(os.path.join(entry.path, MANIFEST_NAME)):
                refs.append(CheckpointRef(entry.name, step, Path(entry.path)))
        return sorted(refs, key=lambda ref: ref.step)

    def latest_step(self) -> int | None:
        refs = self.list_committed()
        return refs[-1].step if refs else None

    def read_manifest(self, ref: CheckpointRef) -> Manifest:
        """The manifest; CorruptCheckpointError if it is gone or wrong,
        CheckpointIOError if it could not be read (retried a few seconds first)."""
        try:
            text = read_or_io_error(
                str(ref.path),
                f"reading {ref.name}/{MANIFEST_NAME}",
                lambda: read_regular(ref.path, MANIFEST_NAME, MAX_MANIFEST_BYTES),
                time.monotonic() + LOCAL_READ_SECONDS,
            )
        except (NotRegularFileError, TooLargeError) as error:
            raise CorruptCheckpointError(str(ref.path), str(error)) from None
        except FileNotFoundError:
            raise CorruptCheckpointError(str(ref.path), "manifest.json is missing") from None
        except (IsADirectoryError, NotADirectoryError) as error:
            raise CorruptCheckpointError(str(ref.path), f"manifest unreadable ({error})") from None
        manifest = Manifest.from_json(text, str(ref.path))
        if manifest.step != ref.step:
            raise CorruptCheckpointError(
                str(ref.path), f"manifest says step {manifest.step}, directory {ref.step}"
            )
        return manifest

    def load(self, ref: CheckpointRef) -> LoadedCheckpoint:
        """Read every file of `ref` into memory, verifying sizes and checksums."""
        manifest = self.read_manifest(ref)
        files = {}
        for name, entry in manifest.files.items():
            files[name] = _read_verified(ref.path / name, entry, str(ref.path))
        return LoadedCheckpoint(ref, manifest, files)

    def verify(self, ref: CheckpointRef) -> list[str]:
        """Problems with `ref`, file by file; empty when it is intact."""
        try:
            manifest = self.read_manifest(ref)
        except CorruptCheckpointError as error:
            return [error.reason]
        problems = []
        for name, entry in manifest.files.items():
            try:
                _read_verified(ref.path / name, entry, str(ref.path), keep=False)
            except CorruptCheckpointError as error:
                problems.append(error.reason)
        return problems

    def load_latest(self) -> LoadedCheckpoint | None:
        """The newest checkpoint that verifies.

        A corrupt newer one is reported, moved aside under a `corrupt-` name
        (kept for inspection, never deleted) and the previous one is used.
        An I/O error (`CheckpointIOError`) is raised as it is: it moves nothing.
        """
        for ref in reversed(self.list_committed()):
            try:
                return self.load(ref)
            except CorruptCheckpointError as error:
                log.warning("%s; falling back to the previous checkpoint", error)
                self._quarantine(ref)
        return None

    def newest_verified(self) -> CheckpointRef | None:
        """Like `load_latest`, without keeping the bytes: the ref of the newest
        checkpoint that verifies, corrupt newer ones moved aside."""
        for ref in reversed(self.list_committed()):
            problems = self.verify(ref)
            if not problems:
                return ref
            log.warning(
                "checkpoint %s is corrupt: %s; falling back to the previous checkpoint",
                ref.path,
                "; ".join(problems),
            )
            self._quarantine(ref)
        return None

    def file_size(self, ref: CheckpointRef, file_name: str) -> int | None:
        """None when missing; NotRegularFileError for a symlink, FIFO or device."""
        try:
            with open_regular(ref.path, file_name) as file:
                return os.fstat(file.fileno()).st_size
        except FileNotFoundError:
            return None

    def open_file(self, ref: CheckpointRef, file_name: str) -> BinaryIO:
        """FileNotFoundError when missing; NotRegularFileError for a special file."""
        return open_regular(ref.path, file_name)

    # -- writing (caller holds the directory lock) ---------------------------

    def commit(
        self,
        *,
        step: int,
        epoch: int,
        batch: int,
        files: Mapping[str, Iterable[bytes | memoryview]],
        writer: WriterInfo,
    ) -> CheckpointRef:
        """Write `files` and commit them as checkpoint `step`, atomically."""
        for file_name in files:
            check_file_name(file_name)  # what readers would refuse is never written
        temporary = self.new_temporary(checkpoint_name(step))
        try:
            entries = {
                file_name: _write_file(temporary / file_name, chunks)
                for file_name, chunks in files.items()
            }
            manifest = Manifest(step=step, epoch=epoch, batch=batch, files=entries, writer=writer)
            return self._publish(temporary, manifest)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise

    def new_temporary(self, name: str) -> Path:
        """A fresh temporary sibling directory for building checkpoint `name`."""
        token = f"{os.getpid()}-{secrets.token_hex(3)}"
        temporary = self.directory / f"{TEMPORARY_PREFIX}{name}-{token}"
        temporary.mkdir(parents=True)
        return temporary

    def adopt(self, temporary: Path, manifest: Manifest) -> CheckpointRef:
        """Commit data files produced elsewhere (a download) under `manifest`.

        The files in `temporary` are verified against the manifest first; on
        any mismatch nothing is committed and CorruptCheckpointError is raised.
        """
        try:
            for file_name, entry in manifest.files.items():
                _read_verified(temporary / file_name, entry, str(temporary), keep=False)
                _fsync_file(temporary / file_name)
            return self._publish(temporary, manifest)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise

    def _publish(self, temporary: Path, manifest: Manifest) -> CheckpointRef:
        """Manifest last, then the rename that makes the checkpoint exist."""
        name = checkpoint_name(manifest.step)
        final = self.directory / name
        _write_file(temporary / MANIFEST_NAME, [manifest.to_json().encode()])
        _fsync_directory(temporary)
        if final.exists():
            # Same step committed before (a final save right after a
            # periodic one, or a resumed attempt): the state is the same.
            log.debug("checkpoint %s already committed; keeping it", name)
            shutil.rmtree(temporary)
            return CheckpointRef(name, manifest.step, final)
        os.rename(temporary, final)
        _fsync_directory(self.directory)
        # Written (or verified, for `adopt`) from bytes checksummed here.
        self._committed_here.add(name)
        return CheckpointRef(name, manifest.step, final)

    def apply_retention(self, keep: int, trusted: Collection[str] = ()) -> list[CheckpointRef]:
        """Delete all but the newest `keep` committed checkpoints, never the newest
        one that verifies (see `stores.plan_retention`); returns the deleted."""
        return stores.apply_retention(self, keep, trusted={*trusted, *self._committed_here})

    def remove_stale_temporaries(self) -> list[str]:
        """Remove what interrupted writes and deletions left; returns their names.

        Logged here, once, whoever calls it (the supervisor at start-up)."""
        removed = []
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return removed
        for entry in entries:
            if entry.name.startswith(TEMPORARY_PREFIX) and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.name)
        if removed:
            log.info(
                "removed %d unfinished checkpoint write(s): %s",
                len(removed),
                ", ".join(removed),
                extra={"event": "stale_removed"},
            )
        return removed

    def delete(self, ref: CheckpointRef) -> None:
        """Remove a committed checkpoint (renamed away first: never half-visible)."""
        doomed = self.directory / f"{TEMPORARY_PREFIX}delete-{ref.name}-{secrets.token_hex(3)}"
        os.rename(ref.path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    def remove_backup(self) -> list[str]:
        """Remove ftharness's own files of a finished job; returns their names.

        Removed: committed checkpoints, temporaries, the lock file, leases
        (`.ftharness/lease-*.json`) and the delete-on-success marker; then
        `.ftharness/` and the directory itself if nothing else is left. Kept:
        every other file (a user's), the event records (`.ftharness/events/`)
        and quarantined `corrupt-` checkpoints. Call it holding the lock.
        """
        removed = [ref.name for ref in self.list_committed()]
        for ref in self.list_committed():
            self.delete(ref)
        removed += self.remove_stale_temporaries()
        own = self.directory / STATE_DIR
        doomed = [*own.glob("lease-*.json"), self.directory / DELETE_ON_SUCCESS_MARKER]
        doomed.append(self.directory / LOCK_FILE_NAME)  # last: it guards the rest
        for path in doomed:
            if path.exists():
                path.unlink()
                removed.append(str(path.relative_to(self.directory)))
        for folder in (own, self.directory):
            with contextlib.suppress(OSError):  # not empty: what is left is not ours
                folder.rmdir()
        return removed

    def _quarantine(self, ref: CheckpointRef) -> None:
        target = self.directory / f"{QUARANTINE_PREFIX}{ref.name}-{int(time.time())}"
        try:
            os.rename(ref.path, target)
            log.warning("moved the corrupt checkpoint aside to %s", target)
        except OSError as error:
            log.warning("could not move the corrupt checkpoint %s aside: %s", ref.path, error)


def _write_file(path: Path, chunks: Iterable[bytes | memoryview]) -> FileEntry:
    # Written, checksummed and fsynced in one pass (see checkpoint.durable).
    size, crc = write_durable(path, chunks)
    return FileEntry(size=size, crc32=crc)


def _read_local_entries(directory: Path) -> list[os.DirEntry]:
    return read_or_io_error(
        str(directory),
        f"listing {directory}",
        lambda: list(os.scandir(directory)),
        time.monotonic() + LOCAL_READ_SECONDS,
    )


def _read_verified(path: Path, entry: FileEntry, location: str, keep: bool = True) -> bytearray:
    """Read `path` and check it against `entry`: corrupt if its content is wrong,
    CheckpointIOError if it cannot be read (after retrying a few seconds)."""
    try:
        return read_or_io_error(
            location,
            f"reading {path}",
            lambda: _read_checked(path, entry, location, keep),
            time.monotonic() + LOCAL_READ_SECONDS,
        )
    except NotRegularFileError as error:
        raise CorruptCheckpointError(location, str(error)) from None
    except (FileNotFoundError, NotADirectoryError):
        raise CorruptCheckpointError(location, f"{path.name} is missing") from None
    except IsADirectoryError:
        raise CorruptCheckpointError(location, f"{path.name} is not a file") from None


def _read_checked(path: Path, entry: FileEntry, location: str, keep: bool) -> bytearray:
    with open_regular(path.parent, path.name) as file:
        actual_size = os.fstat(file.fileno()).st_size
        if actual_size != entry.size:
            raise CorruptCheckpointError(
                location, f"{path.name} has {actual_size} bytes, manifest says {entry.size}"
            )
        return _read_and_check(file, path, entry, location, keep)


def _read_and_check(
    file: BinaryIO, path: Path, entry: FileEntry, location: str, keep: bool
) -> bytearray:
    # Never more than entry.size bytes, whatever the file does meanwhile.
    buffer = bytearray(entry.size if keep else min(entry.size, _READ_CHUNK))
    view = memoryview(buffer)
    crc = 0
    offset = 0
    while offset < entry.size:
        target = view[offset:] if keep else view
        count = file.readinto(target[: min(len(target), _READ_CHUNK, entry.size - offset)])
        if not count:
            break
        crc = crc32(target[:count], crc)
        offset += count
    if crc != entry.crc32:
        raise CorruptCheckpointError(location, f"{path.name} fails its checksum")
    return buffer if keep else bytearray()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
