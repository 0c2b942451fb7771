"""The uploader: copies committed local checkpoints to the remote store.

It runs in the supervisor, never in the worker, so a slow store never stalls
training. One background thread; the newest committed checkpoint is uploaded
first (intermediate ones are skipped when the store is slower than training).

The worker's retention may delete a local checkpoint while it is being
uploaded. The uploader therefore never reads `ckpt-*` directly: it first
hard-links the checkpoint's files into a private `.upload-*` directory (no
copy, and immune to the deletion), and uploads from there.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from fsspec.implementations.local import LocalFileSystem

from ftharness.checkpoint.lease import LeaseLostError, RemoteLease
from ftharness.checkpoint.local import CheckpointRef, LocalCheckpointStore
from ftharness.checkpoint.manifest import MANIFEST_NAME
from ftharness.checkpoint.remote import RemoteCheckpointStore
from ftharness.events import EVENTS_DIR
from ftharness.progress import progress_for
from ftharness.redact import describe_error

log = logging.getLogger("ftharness.replicator")

STAGING_PREFIX = ".upload-"


class Replicator:
    """Keeps the remote store up to date with the local one.

    Example::

        replicator = Replicator(local, remote, lease, keep=2)
        replicator.start()
        replicator.notify()                      # a new local checkpoint exists
        replicator.flush(deadline=time.monotonic() + 20)   # on SIGTERM
        replicator.stop()
    """

    def __init__(
        self,
        local: LocalCheckpointStore,
        remote: RemoteCheckpointStore,
        lease: RemoteLease,
        keep: int,
    ) -> None:
        self.local = local
        self.remote = remote
        self.lease = lease
        self.keep = keep
        latest = remote.latest()
        self.uploaded_step: int | None = latest.step if latest else None
        self.lease_lost = False
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._progress = threading.Condition()
        self._deadline: float | None = None
        self._thread = threading.Thread(target=self._run, name="ftharness-uploader", daemon=True)
        self._failures = 0
        self._synced_events: dict[str, int] = {}
        self._on_uploaded: Callable[[float, int], None] | None = None

    def start(self, on_uploaded: Callable[[float, int], None] | None = None) -> None:
        """Start uploading; `on_uploaded(seconds, bytes)` is told of each upload."""
        self._on_uploaded = on_uploaded
        remove_staging(self.local.directory)
        self._thread.start()

    def notify(self) -> None:
        self._wake.set()

    def flush(self, deadline: float | None) -> bool:
        """Wait until the newest local checkpoint is uploaded, or the deadline.

        Returns True when the remote store has it.
        """
        target = self.local.latest_step()
        if target is None:
            return True
        with self._progress:
            self._deadline = deadline
        self._wake.set()
        with self._progress:
            while not self._has(target) and not self.lease_lost:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._progress.wait(timeout=remaining if remaining is not None else 1.0)
                self._wake.set()
        return self._has(target)

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=30)
        if not self.lease_lost:
            self._sync_events()  # the attempts' final records

    def _sync_events(self) -> None:
        """Copy the supervisor's event records (`ftharness status`) beside the checkpoints.

        One small file per attempt, rewritten whole: an overwrite is all an
        object store needs, no append.
        """
        directory = self.local.directory / EVENTS_DIR
        try:
            records = [p for p in directory.glob("*.json") if not p.name.startswith(".")]
        except OSError:
            return
        for path in records:
            try:
                stamp = path.stat().st_mtime_ns
                if self._synced_events.get(path.name) == stamp:
                    continue
                target = self.remote.path(*EVENTS_DIR.parts, path.name)
                if isinstance(self.remote.fs, LocalFileSystem):
                    Path(target).parent.mkdir(parents=True, exist_ok=True)
                self.remote.fs.pipe_file(target, path.read_bytes())
                self._synced_events[path.name] = stamp
            except Exception as error:  # records are a convenience: never fail a run for them
                log.debug("could not copy event record %s: %s", path.name, error)

    def _has(self, step: int) -> bool:
        return self.uploaded_step is not None and self.uploaded_step >= step

    def _run(self) -> None:
        renew_every = self.lease.ttl / 3
        next_renewal = time.monotonic() + renew_every
        while not self._stopping.is_set():
            timeout = max(0.0, next_renewal - time.monotonic())
            if self._failures:  # back off after failed uploads
                timeout = min(timeout, min(30.0, 0.5 * 2**self._failures))
            self._wake.wait(timeout)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                if time.monotonic() >= next_renewal:
                    self.lease.renew()
                    next_renewal = time.monotonic() + renew_every
                self._upload_newest()
                self._failures = 0
            except LeaseLostError as error:
                log.error("%s; uploads stop", error, extra={"event": "lease_lost"})
                self.lease_lost = True
                with self._progress:
                    self._progress.notify_all()
                return
            except Exception as error:
                self._failures += 1
                log.warning(
                    "upload failed (%s); will retry",
                    describe_error(error),
                    extra={"event": "upload_failed"},
                )

    def _upload_newest(self) -> None:
        newest = self.local.list_committed()
        if not newest or self._has(newest[-1].step):
            return
        ref = newest[-1]
        staged = stage(self.local, ref)
        if staged is None:
            return  # deleted by retention meanwhile: a newer one exists
        started = time.monotonic()
        size = sum(entry.size for entry in self.local.read_manifest(staged).files.values())
        try:
            with self._progress:
                deadline = self._deadline
            self.remote.upload(
                self.local, staged, deadline=deadline, callback=progress_for(f"upload {ref.name}")
            )
        finally:
            shutil.rmtree(staged.path, ignore_errors=True)
        elapsed = time.monotonic() - started
        log.info(
            "uploaded %s to %s in %.1f s",
            ref.name,
            self.remote.url,
            elapsed,
            extra={"event": "uploaded", "step": ref.step, "seconds": round(elapsed, 3)},
        )
        with self._progress:
            self.uploaded_step = ref.step
            self._progress.notify_all()
        if self._on_uploaded is not None:
            self._on_uploaded(elapsed, size)
        self._sync_events()
        deleted = self.remote.apply_retention(self.keep)
        if deleted:
            log.debug("remote retention deleted %s", [ref.name for ref in deleted])


def stage(local: LocalCheckpointStore, ref: CheckpointRef) -> CheckpointRef | None:
    """Hard-link a committed checkpoint's files into a private directory."""
    staging = local.directory / f"{STAGING_PREFIX}{ref.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        for source in ref.path.iterdir():
            os.link(source, staging / source.name)
        if not (staging / MANIFEST_NAME).exists():
            raise FileNotFoundError(MANIFEST_NAME)
    except FileNotFoundError:
        shutil.rmtree(staging, ignore_errors=True)
        return None
    return CheckpointRef(ref.name, ref.step, staging)


def remove_staging(directory: Path) -> None:
    """Remove staging directories an earlier supervisor left behind."""
    for entry in directory.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(entry, ignore_errors=True)
