"""Before the first worker: the local directory, the remote store, the lease.

Order matters. The local lock comes first (one supervisor per machine
directory), then the remote lease (one writer per backup URL), and only then
anything that writes: cleaning up after crashes, fetching the newest remote
checkpoint into the local directory.

In a multi-worker group only the chief's supervisor does all that
(`prepare_remote`); every other one only reads the backup URL
(`prepare_reader`): no lease, no clean-up, no write of any kind.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from ftharness.checkpoint.lease import LeaseHeldError, LeaseKeeper, RemoteLease
from ftharness.checkpoint.local import LocalCheckpointStore
from ftharness.checkpoint.lock import DirectoryLock
from ftharness.checkpoint.reader import BackupReader, fetch_newest
from ftharness.checkpoint.remote import RemoteCheckpointStore
from ftharness.checkpoint.replicator import Replicator
from ftharness.config import SupervisorConfig
from ftharness.redact import describe_error, redact_url

log = logging.getLogger("ftharness.startup")

__all__ = ["RemoteStoreUnusable", "fetch_newest", "prepare_local_dir", "prepare_reader",
           "prepare_remote"]  # fmt: skip


class RemoteStoreUnusable(OSError):
    """The backup URL cannot be listed or written (bucket, credentials, endpoint)."""


def prepare_local_dir(directory: Path, run_id: str) -> DirectoryLock:
    """Create and lock the local checkpoint directory, then clean up after crashes."""
    directory.mkdir(parents=True, exist_ok=True)
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionError(13, "not writable")
    lock = DirectoryLock.acquire(directory, run_id=run_id, role="supervisor")
    LocalCheckpointStore(directory).remove_stale_temporaries()  # logs what it removed
    return lock


def prepare_remote(config: SupervisorConfig) -> Replicator:
    """Lease the backup URL, clean it up, fetch its newest checkpoint if newer.

    Raises LeaseHeldError if another run keeps the lease past `lease_wait`,
    RemoteStoreUnusable if the store cannot be reached or written.
    """
    try:
        remote = RemoteCheckpointStore(config.backup_url, config.storage_options)
        lease = RemoteLease(remote.fs, remote.root, config.run_id, ttl=config.lease_ttl)
        _acquire_waiting(lease, config.lease_wait)
    except LeaseHeldError:
        raise
    except Exception as error:  # the store's own errors: no credentials in them
        raise RemoteStoreUnusable(
            f"{redact_url(config.backup_url)}: {describe_error(error)}"
        ) from None
    local = LocalCheckpointStore(config.local_dir)
    keeper = LeaseKeeper(lease)
    keeper.start()  # a long download at start-up must not let the lease lapse either
    try:
        torn = remote.remove_torn_uploads(before_delete=keeper.check)
        if torn:
            log.info("removed %d torn upload(s) from %s: %s", len(torn), remote.url, torn)
        fetch_newest(remote, local)
    except Exception:
        keeper.stop()
        lease.release()
        raise
    return Replicator(local, remote, lease, keep=config.keep, keeper=keeper)


def prepare_reader(config: SupervisorConfig) -> BackupReader:
    """A non-chief's view of the backup URL: fetch its newest checkpoint if newer.

    Never writes to the URL (the chief's supervisor is its one writer, under
    the lease). Raises RemoteStoreUnusable if the store cannot be listed, and
    a `CheckpointIOError` (an OSError) from the download.
    """
    try:
        remote = RemoteCheckpointStore(config.backup_url, config.storage_options)
        remote.list_committed()
    except Exception as error:  # the store's own errors: no credentials in them
        raise RemoteStoreUnusable(
            f"{redact_url(config.backup_url)}: {describe_error(error)}"
        ) from None
    local = LocalCheckpointStore(config.local_dir)
    fetch_newest(remote, local)
    return BackupReader(remote, local)


def _acquire_waiting(lease: RemoteLease, wait: float) -> None:
    deadline = time.monotonic() + wait
    while True:
        try:
            lease.acquire()
            return
        except LeaseHeldError as error:
            if time.monotonic() >= deadline:
                raise
            log.warning(
                "%s; waiting up to %.0f s for it",
                error,
                deadline - time.monotonic(),
                extra={"event": "lease_wait"},
            )
            time.sleep(min(5.0, max(0.1, deadline - time.monotonic()), lease.ttl / 4))
