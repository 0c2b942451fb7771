"""Where the supervisor's event records go: replaced whole, never appended.

`LocalRecordSink` writes beside the local checkpoints (temporary file,
fsync, rename); `StoreRecordSink` beside the remote ones (one PUT);
`MirroredRecordSink` does the first at once and the second in the
background, while the lease says this run is the backup's writer. The
record format itself is `ftharness.events`.
"""

from __future__ import annotations

import atexit
import logging
import os
import posixpath
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from fsspec.implementations.local import LocalFileSystem

from ftharness.checkpoint.layout import EVENTS_DIR
from ftharness.checkpoint.remote import RemoteCheckpointStore

log = logging.getLogger("ftharness.events")


class RecordSink(Protocol):
    """Somewhere a record can be replaced whole, atomically."""

    def write(self, name: str, data: bytes) -> None: ...


class LocalRecordSink:
    """Records in a local directory: temporary file, fsync, rename."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def write(self, name: str, data: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = self.directory / f".{name}.tmp-{os.getpid()}"
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.directory / name)


class StoreRecordSink:
    """Records beside a remote store's checkpoints.

    One PUT replaces a record whole: no append, no half-written record.
    """

    def __init__(self, remote: RemoteCheckpointStore) -> None:
        self.fs = remote.fs
        self.directory = remote.path(*EVENTS_DIR.parts)

    def write(self, name: str, data: bytes) -> None:
        if isinstance(self.fs, LocalFileSystem):  # object stores have no directories
            Path(self.directory).mkdir(parents=True, exist_ok=True)
        self.fs.pipe_file(posixpath.join(self.directory, name), data)


class MirroredRecordSink:
    """Writes to `primary` at once and copies each record to `mirror` in the background.

    The supervisor must never wait on a slow store to record an event, so the
    copy runs on its own thread, newest version of each record only. A copy
    that fails is logged (debug: records are a convenience) and retried with
    the next write. At exit, pending copies get `EXIT_FLUSH_SECONDS`.

    Records written while `allowed()` is false (the lease was lost: another
    run writes this backup now) stay local.
    """

    EXIT_FLUSH_SECONDS = 10.0

    def __init__(
        self, primary: RecordSink, mirror: RecordSink, allowed: Callable[[], bool] = lambda: True
    ) -> None:
        self.primary = primary
        self.mirror = mirror
        self.allowed = allowed
        self._pending: dict[str, bytes] = {}
        self._changed = threading.Condition()
        self._busy = False
        self._thread = threading.Thread(target=self._run, name="ftharness-records", daemon=True)
        self._thread.start()
        atexit.register(self.flush, self.EXIT_FLUSH_SECONDS)

    def write(self, name: str, data: bytes) -> None:
        self.primary.write(name, data)
        if not self.allowed():
            return
        with self._changed:
            self._pending[name] = data
            self._changed.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until every record written so far is copied; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._pending or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._pending:
                    self._busy = False
                    self._changed.notify_all()
                    self._changed.wait()
                name, data = self._pending.popitem()
                self._busy = True
            try:
                self.mirror.write(name, data)
            except Exception as error:  # never fail a run for its records
                log.debug("could not copy event record %s: %s", name, error)
