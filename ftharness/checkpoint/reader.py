"""A non-chief's side of the backup URL: read it, never write it.

In a multi-worker group only the chief's supervisor writes the backup URL
(the `Replicator`, under the lease). Every other supervisor keeps its own
local directory filled from it (`fetch`, before each launch), and when it is
stopped it waits until the chief's supervisor has uploaded the group's final
checkpoint (`wait_for_step`), so that a replacement started elsewhere, with
an empty directory, finds it. Nothing here creates, deletes or renews
anything remotely.
"""

from __future__ import annotations

import logging
import time

from ftharness.checkpoint.local import LocalCheckpointStore
from ftharness.checkpoint.manifest import CorruptCheckpointError
from ftharness.checkpoint.remote import RemoteCheckpointStore
from ftharness.progress import progress_for
from ftharness.redact import describe_error

log = logging.getLogger("ftharness.reader")

# How often a stopped non-chief looks whether the chief's upload has arrived.
POLL_SECONDS = 0.5


class BackupReader:
    """Reads the backup URL into the local store.

    Example::

        reader = BackupReader(RemoteCheckpointStore(url), LocalCheckpointStore(path))
        reader.fetch()                                   # before a launch
        reader.wait_for_step(12, until=time.monotonic() + 20)   # after a stop
    """

    def __init__(self, remote: RemoteCheckpointStore, local: LocalCheckpointStore) -> None:
        self.remote = remote
        self.local = local

    def fetch(self) -> None:
        """`fetch_newest`, but a failure is only logged: the worker finds out
        what it has, and a worker that lacks the group's step says so (PEER_LOST)."""
        try:
            fetch_newest(self.remote, self.local)
        except Exception as error:  # the store's errors, an I/O error: launch anyway
            log.warning(
                "could not fetch from %s before the launch: %s",
                self.remote.url,
                describe_error(error),
                extra={"event": "fetch_failed"},
            )

    def wait_for_step(self, step: int, until: float) -> bool:
        """Poll until the backup lists a committed checkpoint at `step` or later,
        or `until` (monotonic) passes; one line either way. True if it came."""
        log.info(
            "waiting up to %.1f s for the chief to upload step %d to %s",
            max(0.0, until - time.monotonic()),
            step,
            self.remote.url,
            extra={"event": "chief_upload_wait", "step": step},
        )
        while True:
            try:
                newest = self.remote.latest()
            except Exception as error:  # a store error: look again until the deadline
                log.debug("listing %s failed: %s", self.remote.url, describe_error(error))
                newest = None
            if newest is not None and newest.step >= step:
                log.info(
                    "the backup has step %d (our newest is %d)",
                    newest.step,
                    step,
                    extra={"event": "chief_upload_seen", "step": newest.step},
                )
                return True
            left = until - time.monotonic()
            if left <= 0:
                log.warning(
                    "stop deadline passed before the backup had step %d (it has %s); exiting",
                    step,
                    newest.step if newest is not None else "none",
                    extra={"event": "chief_upload_missed", "step": step},
                )
                return False
            time.sleep(min(POLL_SECONDS, left))


def fetch_newest(remote: RemoteCheckpointStore, local: LocalCheckpointStore) -> None:
    """Download the newest remote checkpoint that verifies, if newer than the
    newest local one that verifies.

    A corrupt local checkpoint is moved aside first (as a restore would), so
    that it can neither hide an intact remote copy of the same step nor stop
    the download from committing. An I/O error on either side is raised
    (`CheckpointIOError`, exit 73): it is not a reason to fall back.
    """
    newest_local = local.newest_verified()
    local_step = newest_local.step if newest_local is not None else None
    for ref in reversed(remote.list_committed()):
        if local_step is not None and ref.step <= local_step:
            log.info("local checkpoint (step %d) is up to date with %s", local_step, remote.url)
            return
        started = time.monotonic()
        try:
            remote.download(ref, local, callback=progress_for(f"fetch {ref.name}"))
        except CorruptCheckpointError as error:
            log.warning("%s; trying the previous one", error, extra={"event": "remote_corrupt"})
            continue
        log.info(
            "fetched %s from %s in %.1f s",
            ref.name,
            remote.url,
            time.monotonic() - started,
            extra={"event": "fetched", "step": ref.step},
        )
        return
