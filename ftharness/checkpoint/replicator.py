"""The uploader: copies committed local checkpoints to the remote store.

It runs in the supervisor, never in the worker, so a slow store never stalls
training. One background thread; the newest committed checkpoint is uploaded
first (intermediate ones are skipped when the store is slower than training).

The worker's retention may delete a local checkpoint while it is being
uploaded. The uploader therefore never reads `ckpt-*` directly: it first
hard-links the checkpoint's files into a private `.upload-*` directory (no
copy, and immune to the deletion), and uploads from there.

The lease is kept by a `LeaseKeeper` on its own timer, not by this thread:
an upload may take longer than the lease's TTL. Before the manifest is
written and before each retention deletion the keeper is asked again; once
the lease is lost, nothing more is written or deleted (the supervisor keeps
training locally). The event records are mirrored by `events`, not here.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ftharness.checkpoint.layout import MANIFEST_NAME, STAGING_PREFIX
from ftharness.checkpoint.lease import LeaseKeeper, LeaseLostError, RemoteLease
from ftharness.checkpoint.local import CheckpointRef, LocalCheckpointStore
from ftharness.checkpoint.remote import RemoteCheckpointStore
from ftharness.progress import progress_for
from ftharness.redact import describe_error

log = logging.getLogger("ftharness.replicator")

__all__ = ["STAGING_PREFIX", "Replicator", "UploaderBusyError", "remove_staging", "stage"]


class UploaderBusyError(Exception):
    """The uploader did not stop in time: removing the backup could race an upload."""

    def __init__(self, url: str) -> None:
        super().__init__(f"{url}: the uploader is still uploading; nothing removed")
        self.url = url


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
        keeper: LeaseKeeper | None = None,
    ) -> None:
        """`keeper` keeps `lease` alive (one is made if not given; started either way)."""
        self.local = local
        self.remote = remote
        self.lease = lease
        self.keeper = keeper if keeper is not None else LeaseKeeper(lease)
        self.keep = keep
        latest = remote.latest()
        self.uploaded_step: int | None = latest.step if latest else None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._progress = threading.Condition()
        self._deadline: float | None = None
        self._thread = threading.Thread(target=self._run, name="ftharness-uploader", daemon=True)
        self._failures = 0
        self._refused: set[int] = set()  # corrupt local checkpoints, never uploaded
        self._on_uploaded: Callable[[float, int], None] | None = None

    def start(self, on_uploaded: Callable[[float, int], None] | None = None) -> None:
        """Start uploading; `on_uploaded(seconds, bytes)` is told of each upload."""
        self._on_uploaded = on_uploaded
        remove_staging(self.local.directory)
        self.keeper.start()
        self._thread.start()

    @property
    def lease_lost(self) -> bool:
        return self.keeper.lost

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
            while not self._has(target) and not self.lease_lost and target not in self._refused:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                # Woken by each upload; the lease keeper's thread does not
                # notify, so look at `lease_lost` at least once a second.
                self._progress.wait(timeout=min(remaining, 1.0) if remaining is not None else 1.0)
                self._wake.set()
        return self._has(target)

    def stop(self) -> None:
        self._stop_uploading()
        self.keeper.stop()

    def _stop_uploading(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def remove_backup(self) -> list[str]:
        """Remove the finished job's checkpoints from the remote store.

        The uploader stops first (no upload may commit behind the removal);
        the lease keeper goes on renewing until `stop()`. The lease is checked
        before every deletion: once it is lost, LeaseLostError and nothing
        more is deleted. Returns the names removed.
        """
        self._stop_uploading()
        if self._thread.is_alive():
            # Still inside an upload after 30 s: it could commit after the
            # removal, so remove nothing rather than a part.
            raise UploaderBusyError(self.remote.url)
        removed = self.remote.remove_backup(before_delete=self.keeper.check)
        with self._progress:
            self.uploaded_step = None
        return removed

    def _has(self, step: int) -> bool:
        return self.uploaded_step is not None and self.uploaded_step >= step

    def _run(self) -> None:
        while not self._stopping.is_set():
            timeout = None
            if self._failures:  # back off after failed uploads
                timeout = min(30.0, 0.5 * 2**self._failures)
            self._wake.wait(timeout)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self._upload_newest()
                self._failures = 0
            except LeaseLostError as error:
                if not self.keeper.lost:  # could not be checked: retry later
                    self._failed(error)
                    continue
                with self._progress:
                    self._progress.notify_all()
                return
            except Exception as error:
                self._failed(error)

    def _failed(self, error: Exception) -> None:
        self._failures += 1
        log.warning(
            "upload failed (%s); will retry",
            describe_error(error),
            extra={"event": "upload_failed"},
        )

    def _upload_newest(self) -> None:
        newest = self.local.list_committed()
        if not newest or self._has(newest[-1].step) or newest[-1].step in self._refused:
            return
        ref = newest[-1]
        staged = stage(self.local, ref)
        if staged is None:
            return  # deleted by retention meanwhile: a newer one exists
        problems = self.local.verify(staged)
        if problems:
            # Never upload what a restore would refuse: the remote's older
            # intact checkpoints must stay the newest that verify there.
            shutil.rmtree(staged.path, ignore_errors=True)
            log.error("not uploading %s, it is corrupt: %s", ref.name, "; ".join(problems))
            with self._progress:
                self._refused.add(ref.step)
                self._progress.notify_all()
            return
        started = time.monotonic()
        size = sum(entry.size for entry in self.local.read_manifest(staged).files.values())
        try:
            with self._progress:
                deadline = self._deadline
            self.keeper.check()
            self.remote.upload(
                self.local,
                staged,
                deadline=deadline,
                callback=progress_for(f"upload {ref.name}"),
                before_manifest=self.keeper.check,
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
        deleted = self.remote.apply_retention(self.keep, before_delete=self.keeper.check)
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
