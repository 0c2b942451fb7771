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
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import fsspec
from fsspec.callbacks import DEFAULT_CALLBACK
from fsspec.implementations.local import LocalFileSystem

from ftharness.checkpoint.local import CheckpointRef, LocalCheckpointStore
from ftharness.checkpoint.manifest import (
    CHECKPOINT_PREFIX,
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    CorruptCheckpointError,
    Manifest,
    step_of,
)
from ftharness.checkpoint.safe_read import NotRegularFileError, TooLargeError, regular_object_size

log = logging.getLogger("ftharness.remote")

T = TypeVar("T")

# Errors that retrying cannot fix, even though they are OSErrors.
_NOT_TRANSIENT = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError)


def _transient_errors() -> tuple[type[BaseException], ...]:
    """The store and network errors worth a retry.

    s3fs maps S3's errors to OSError; aiohttp's connection errors are
    OSErrors too; gcsfs raises its own HttpError. Programming errors
    (AttributeError, TypeError, ...) are never retried.
    """
    errors: list[type[BaseException]] = [OSError, TimeoutError]
    gcsfs_retry = sys.modules.get("gcsfs.retry")
    if gcsfs_retry is not None:
        errors.append(gcsfs_retry.HttpError)
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is not None:
        errors.append(aiohttp.ClientError)
    return tuple(errors)


class DeadlineExceeded(TimeoutError):
    """An operation could not finish before its deadline."""


def retry_until(
    deadline: float | None, what: str, operation: Callable[[], T], attempts: int = 8
) -> T:
    """Run `operation`, retrying transient errors with backoff until `deadline`.

    fsspec's backends retry some errors themselves, but not against a
    deadline: the final upload has a grace period to fit in.
    """
    delay = 0.2
    for attempt in range(1, attempts + 1):
        try:
            return operation()
        except _NOT_TRANSIENT:
            raise
        except _transient_errors() as error:
            remaining = None if deadline is None else deadline - time.monotonic()
            if attempt == attempts or (remaining is not None and remaining <= delay):
                raise
            log.warning("%s failed (%s); retrying in %.1f s", what, _describe(error), delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")


def _describe(error: Exception) -> str:
    # The error's text, never its arguments' repr: no credentials in logs.
    return f"{type(error).__name__}: {str(error)[:200]}"


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

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        self.root = self.root.rstrip("/")

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

    def read_manifest(self, ref: RemoteRef) -> Manifest:
        location = f"{self.url.rstrip('/')}/{ref.name}"
        path = posixpath.join(ref.path, MANIFEST_NAME)
        try:
            size = regular_object_size(self.fs.info(path))
            if size > MAX_MANIFEST_BYTES:
                raise TooLargeError(path, size, MAX_MANIFEST_BYTES)
            text = self.fs.cat_file(path, start=0, end=MAX_MANIFEST_BYTES + 1)
        except (NotRegularFileError, TooLargeError) as error:
            raise CorruptCheckpointError(location, str(error)) from None
        except OSError as error:
            raise CorruptCheckpointError(location, f"manifest unreadable ({error})") from None
        manifest = Manifest.from_json(text, location)
        if manifest.step != ref.step:
            raise CorruptCheckpointError(location, f"manifest says step {manifest.step}")
        return manifest

    # -- transfers -------------------------------------------------------------

    def upload(
        self,
        local: LocalCheckpointStore,
        ref: CheckpointRef,
        deadline: float | None = None,
        callback: fsspec.callbacks.Callback | None = None,
    ) -> RemoteRef:
        """Upload a committed local checkpoint: data files first, manifest last."""
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

    def download(
        self,
        ref: RemoteRef,
        local: LocalCheckpointStore,
        deadline: float | None = None,
        callback: fsspec.callbacks.Callback | None = None,
    ) -> CheckpointRef:
        """Fetch `ref` into the local store; verified before it is committed there."""
        manifest = self.read_manifest(ref)
        location = f"{self.url.rstrip('/')}/{ref.name}"
        for file_name, entry in manifest.files.items():
            # Before any byte moves: a FIFO, a device or a symlink on a file://
            # store would hang or never end the copy; a wrong size is corrupt anyway.
            object_path = posixpath.join(ref.path, file_name)
            try:
                size = regular_object_size(self.fs.info(object_path))
            except FileNotFoundError:
                raise CorruptCheckpointError(location, f"{file_name} is missing") from None
            except NotRegularFileError as error:
                raise CorruptCheckpointError(location, str(error)) from None
            if size != entry.size:
                raise CorruptCheckpointError(
                    location, f"{file_name} has {size} bytes, manifest says {entry.size}"
                )
        temporary = local.new_temporary(ref.name)
        for file_name in manifest.files:
            retry_until(
                deadline,
                f"download of {ref.name}/{file_name}",
                lambda f=file_name: self.fs.get_file(
                    posixpath.join(ref.path, f),
                    str(temporary / f),
                    callback=callback or DEFAULT_CALLBACK,
                ),
            )
        return local.adopt(temporary, manifest)

    # -- deleting (the caller holds the lease) --------------------------------

    def delete(self, ref: RemoteRef) -> None:
        # Manifest first: from that instant it is no longer a checkpoint.
        self.fs.rm_file(posixpath.join(ref.path, MANIFEST_NAME))
        self.fs.rm(ref.path, recursive=True)

    def apply_retention(self, keep: int) -> list[RemoteRef]:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        doomed = self.list_committed()[:-keep]
        for ref in doomed:
            self.delete(ref)
        return doomed

    def remove_torn_uploads(self) -> list[str]:
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
                self.fs.rm(entry, recursive=True)
                removed.append(name)
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
