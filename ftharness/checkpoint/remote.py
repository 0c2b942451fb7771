"""Committed checkpoints in object storage (or any fsspec filesystem).

Same layout as the local tier: `URL/ckpt-<step>/` with data files and
`manifest.json`. Object stores have no rename, so the commit is ordering:
upload every data file, then the manifest, create-only. A checkpoint exists
if and only if its manifest exists; a torn upload is a prefix of data files
without a manifest, never listed as a checkpoint, and removed by the next
writer. Deletion runs the other way round: manifest first.

Never `fs.mv` (copy + delete on object stores) nor `fs.transaction`: neither
is atomic there.
"""

from __future__ import annotations

import logging
import posixpath
import shutil
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import fsspec
from fsspec.callbacks import DEFAULT_CALLBACK
from fsspec.implementations.local import LocalFileSystem

from ftharness.checkpoint import store as stores
from ftharness.checkpoint.checksum import crc32
from ftharness.checkpoint.layout import CHECKPOINT_PREFIX, MANIFEST_NAME
from ftharness.checkpoint.local import CheckpointRef, LocalCheckpointStore
from ftharness.checkpoint.manifest import (
    MAX_MANIFEST_BYTES,
    CorruptCheckpointError,
    Manifest,
    step_of,
)
from ftharness.checkpoint.retry import read_or_io_error, retry_until
from ftharness.checkpoint.safe_read import NotRegularFileError, TooLargeError, regular_object_size
from ftharness.redact import redact_url

log = logging.getLogger("ftharness.remote")

__all__ = ["RemoteCheckpointStore", "RemoteRef", "create_only", "retry_until"]

# How long a read with no deadline of its own (start-up, inspection) keeps
# retrying transient errors before it reports an I/O error.
READ_SECONDS = 30.0
_CHUNK = 8 * 1024 * 1024


def _read_deadline(deadline: float | None) -> float:
    return deadline if deadline is not None else time.monotonic() + READ_SECONDS


@dataclass(frozen=True)
class RemoteRef:
    name: str
    step: int
    path: str  # inside the filesystem, without protocol


class RemoteCheckpointStore:
    """Checkpoints under an fsspec URL: gs://, s3://, file://, memory://.

    Example::

        remote = RemoteCheckpointStore("s3://bucket/run-7", {"anon": False})
        remote.upload(local_store, local_ref)
        newest = remote.list_committed()[-1]
        remote.download(newest, local_store)
    """

    def __init__(
        self,
        url: str,
        storage_options: dict | None = None,
        fs: fsspec.AbstractFileSystem | None = None,
    ) -> None:
        """`fs`, when given, is used instead of the URL's own filesystem (tests
        wrap a real one in a faulty one); the URL still names the root."""
        # `url` is what logs and errors show: never its credentials.
        self.url = redact_url(url)
        url_fs, self.root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        self.fs = fs if fs is not None else url_fs
        self.root = self.root.rstrip("/")
        # Checkpoints this object uploaded (from locally verified bytes).
        self._committed_here: set[str] = set()

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    # -- reading -------------------------------------------------------------

    def list_committed(self) -> list[RemoteRef]:
        """Checkpoints with a manifest, oldest first; always a fresh listing."""
        self.fs.invalidate_cache(self.root)  # a cached listing would hide new commits
        try:
            found = self.fs.glob(self.path(f"{CHECKPOINT_PREFIX}*", MANIFEST_NAME))
        except FileNotFoundError:
            return []
        refs = []
        for manifest_path in found:
            directory = posixpath.dirname(manifest_path)
            name = posixpath.basename(directory)
            step = step_of(name)
            if step is not None:
                refs.append(RemoteRef(name, step, directory))
        return sorted(refs, key=lambda ref: ref.step)

    def latest(self) -> RemoteRef | None:
        refs = self.list_committed()
        return refs[-1] if refs else None

    def read_manifest(self, ref: RemoteRef, deadline: float | None = None) -> Manifest:
        """The manifest; CorruptCheckpointError if it is gone or wrong.

        Transient errors are retried (until `deadline`, or `READ_SECONDS`),
        then raised as CheckpointIOError: never taken for corruption. Never
        more than MAX_MANIFEST_BYTES are read, and only from a plain object.
        """
        location = self._location(ref)
        path = posixpath.join(ref.path, MANIFEST_NAME)

        def read() -> bytes:
            size = regular_object_size(self.fs.info(path))
            if size > MAX_MANIFEST_BYTES:
                raise TooLargeError(path, size, MAX_MANIFEST_BYTES)
            return self.fs.cat_file(path, start=0, end=MAX_MANIFEST_BYTES + 1)

        try:
            text = read_or_io_error(
                location, f"reading {ref.name}/{MANIFEST_NAME}", read, _read_deadline(deadline)
            )
        except (NotRegularFileError, TooLargeError) as error:
            raise CorruptCheckpointError(location, str(error)) from None
        except FileNotFoundError:
            raise CorruptCheckpointError(location, "manifest.json is missing") from None
        except (IsADirectoryError, NotADirectoryError) as error:
            raise CorruptCheckpointError(location, f"manifest unreadable ({error})") from None
        manifest = Manifest.from_json(text, location)
        if manifest.step != ref.step:
            raise CorruptCheckpointError(location, f"manifest says step {manifest.step}")
        return manifest

    def _location(self, ref: RemoteRef) -> str:
        return f"{self.url.rstrip('/')}/{ref.name}"

    def file_size(self, ref: RemoteRef, file_name: str) -> int | None:
        """None when missing; NotRegularFileError for a symlink or special file."""
        try:
            return regular_object_size(self.fs.info(posixpath.join(ref.path, file_name)))
        except FileNotFoundError:
            return None

    def open_file(self, ref: RemoteRef, file_name: str) -> BinaryIO:
        return self.fs.open(posixpath.join(ref.path, file_name), "rb")

    def verify(self, ref: RemoteRef, deadline: float | None = None) -> list[str]:
        """Problems with `ref`, file by file (every byte is read); empty when intact.

        Raises CheckpointIOError when the store cannot be read.
        """
        try:
            manifest = self.read_manifest(ref, deadline)
        except CorruptCheckpointError as error:
            return [error.reason]
        problems = []
        for file_name, entry in sorted(manifest.files.items()):
            try:
                size, crc = read_or_io_error(
                    self._location(ref),
                    f"reading {ref.name}/{file_name}",
                    lambda f=file_name, e=entry: self._checksum(ref, f, e.size),
                    _read_deadline(deadline),
                )
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                problems.append(f"{file_name} is missing")
                continue
            except NotRegularFileError as error:
                problems.append(str(error))
                continue
            if size != entry.size:
                problems.append(f"{file_name} has {size} bytes, manifest says {entry.size}")
            elif crc != entry.crc32:
                problems.append(f"{file_name} fails its checksum")
        return problems

    def _checksum(self, ref: RemoteRef, file_name: str, expected_size: int) -> tuple[int, int]:
        """Size and CRC-32 of a plain object, reading at most one byte more than
        the manifest says (a wrong size is all a longer file needs to show)."""
        size = self.file_size(ref, file_name)
        if size is None:
            raise FileNotFoundError(file_name)
        if size != expected_size:
            return size, 0
        crc, size = 0, 0
        with self.open_file(ref, file_name) as file:
            while size <= expected_size and (chunk := file.read(_CHUNK)):
                crc = crc32(chunk, crc)
                size += len(chunk)
        return size, crc

    # -- transfers -------------------------------------------------------------

    def upload(
        self,
        local: LocalCheckpointStore,
        ref: CheckpointRef,
        deadline: float | None = None,
        callback: fsspec.callbacks.Callback | None = None,
        before_manifest: Callable[[], None] | None = None,
    ) -> RemoteRef:
        """Upload a committed local checkpoint: data files first, manifest last.

        `before_manifest` runs right before the manifest is written and may
        raise to stop the commit (the lease check: a writer that lost its
        lease must not commit over another's cleanup).
        """
        manifest = local.read_manifest(ref)
        target = self.path(ref.name)
        if isinstance(self.fs, LocalFileSystem):  # object stores have no directories
            Path(target).mkdir(parents=True, exist_ok=True)
        for file_name in manifest.files:
            retry_until(
                deadline,
                f"upload of {ref.name}/{file_name}",
                lambda f=file_name: self.fs.put_file(
                    str(ref.path / f),
                    posixpath.join(target, f),
                    callback=callback or DEFAULT_CALLBACK,
                ),
            )
        manifest_bytes = (ref.path / MANIFEST_NAME).read_bytes()
        if before_manifest is not None:
            before_manifest()
        try:
            retry_until(
                deadline,
                f"commit of {ref.name}",
                lambda: create_only(self.fs, posixpath.join(target, MANIFEST_NAME), manifest_bytes),
            )
        except FileExistsError:
            # Uploaded before (a retried upload whose response was lost, or
            # the same step from an earlier attempt): keep the committed one.
            log.debug("%s was already committed remotely", ref.name)
            return RemoteRef(ref.name, ref.step, target)
        self._committed_here.add(ref.name)
        return RemoteRef(ref.name, ref.step, target)

    def download(
        self,
        ref: RemoteRef,
        local: LocalCheckpointStore,
        deadline: float | None = None,
        callback: fsspec.callbacks.Callback | None = None,
    ) -> CheckpointRef:
        """Fetch `ref` into the local store; verified before it is committed there.

        CorruptCheckpointError: a file is missing or wrong (fall back to an
        older one); CheckpointIOError: the store could not be read (do not).
        """
        manifest = self.read_manifest(ref, deadline)
        location = self._location(ref)
        for file_name, entry in manifest.files.items():
            # Before any byte moves: a FIFO, a device or a symlink on a file://
            # store would hang or never end the copy; a wrong size is corrupt anyway.
            object_path = posixpath.join(ref.path, file_name)
            try:
                size = read_or_io_error(
                    location,
                    f"looking up {ref.name}/{file_name}",
                    lambda p=object_path: regular_object_size(self.fs.info(p)),
                    _read_deadline(deadline),
                )
            except FileNotFoundError:
                raise CorruptCheckpointError(location, f"{file_name} is missing") from None
            except NotRegularFileError as error:
                raise CorruptCheckpointError(location, str(error)) from None
            if size != entry.size:
                raise CorruptCheckpointError(
                    location, f"{file_name} has {size} bytes, manifest says {entry.size}"
                )
        temporary = local.new_temporary(ref.name)
        try:
            for file_name in manifest.files:
                read_or_io_error(
                    self._location(ref),
                    f"download of {ref.name}/{file_name}",
                    lambda f=file_name: self.fs.get_file(
                        posixpath.join(ref.path, f),
                        str(temporary / f),
                        callback=callback or DEFAULT_CALLBACK,
                    ),
                    _read_deadline(deadline),
                )
        except FileNotFoundError as error:
            shutil.rmtree(temporary, ignore_errors=True)
            raise CorruptCheckpointError(
                self._location(ref), f"a file is missing ({error})"
            ) from None
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        return local.adopt(temporary, manifest)

    # -- deleting (the caller holds the lease) --------------------------------

    def delete(self, ref: RemoteRef) -> None:
        # Manifest first: from that instant it is no longer a checkpoint.
        self.fs.rm_file(posixpath.join(ref.path, MANIFEST_NAME))
        self.fs.rm(ref.path, recursive=True)

    def apply_retention(
        self,
        keep: int,
        trusted: Collection[str] = (),
        before_delete: Callable[[], None] | None = None,
    ) -> list[RemoteRef]:
        """See `store.apply_retention`: never the newest checkpoint that verifies."""
        return stores.apply_retention(
            self, keep, {*trusted, *self._committed_here}, before_delete=before_delete
        )

    def remove_torn_uploads(self, before_delete: Callable[[], None] | None = None) -> list[str]:
        """Delete checkpoint prefixes that never got their manifest."""
        self.fs.invalidate_cache(self.root)
        committed = {ref.name for ref in self.list_committed()}
        try:
            entries = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return []
        removed = []
        for entry in entries:
            name = posixpath.basename(entry.rstrip("/"))
            if step_of(name) is not None and name not in committed:
                if before_delete is not None:
                    before_delete()
                self.fs.rm(entry, recursive=True)
                removed.append(name)
        return removed

    def remove_backup(self, before_delete: Callable[[], None] | None = None) -> list[str]:
        """Remove a finished job's checkpoints: every committed one, then torn uploads.

        Each checkpoint goes manifest first (`delete`). `before_delete` runs
        before every deletion and may raise to stop (the lease check): what
        was deleted before it raised is gone, nothing more is. Kept: the
        event records (`ftharness status` tells the finished run's story)
        and the lease records under `.ftharness/`. The lease records stay on
        purpose: the holder releases its lease after this by writing one more
        record, a newer holder may have written one since our last check, and
        the sequence numbers must never start again from 0 (an old holder's
        number could then be the newest again). They are a few small files,
        pruned as the lease is renewed. Returns the names removed.
        """
        removed = []
        for ref in self.list_committed():
            if before_delete is not None:
                before_delete()
            self.delete(ref)
            self._committed_here.discard(ref.name)
            removed.append(ref.name)
        removed += self.remove_torn_uploads(before_delete=before_delete)
        return removed


def create_only(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write `data` at `path` only if nothing is there; FileExistsError otherwise.

    S3 sends `If-None-Match: *`, GCS `ifGenerationMatch=0` (fsspec's
    mode="create"); a local filesystem uses O_EXCL.
    """
    if isinstance(fs, LocalFileSystem):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "xb") as file:
            file.write(data)
        return
    fs.pipe_file(path, data, mode="create")
