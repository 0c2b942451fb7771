"""Checkpoint commits on a background thread, one at a time.

The training loop is stalled only while it copies its state into host
memory; the commit of that copy (serialising, checksums, writes, fsync, the
manifest, the rename, retention) runs on a writer thread while training goes
on. The heavy parts release the GIL (file writes, fsync, CRC-32), so the
thread costs the training loop little besides disk bandwidth.

Policy: at most one write in flight. A save requested while the previous one
is still being written waits for it before the next snapshot is taken (the
caller calls `make_room()` first; `submit()` refuses to overlap). We wait rather
than skip because:
- memory stays bounded: one snapshot in host memory at a time, never two;
- every requested checkpoint exists: which steps have a checkpoint depends on
  `save_freq`, never on how fast the disk was, so a resumed run is
  reproducible and a run that saves too often degrades to synchronous
  saving (training at disk speed), which is visible in the log, instead of
  silently keeping older checkpoints than the user asked for.

Errors never get lost: a failed write is logged at once, and raised as
`BackgroundWriteError` by the next `make_room()`, `submit()` or `wait()`
(the next save, the final checkpoint, the end of training).

Example::

    writer = BackgroundWriter()
    writer.make_room()                 # the previous write is committed, or raises
    snapshot = copy_of_the_state()     # the only part training waits for
    writer.submit(lambda: store.commit(...), "ckpt-000000000100")
    ...
    writer.wait()                      # before exiting: the newest write is committed
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable

log = logging.getLogger("ftharness.checkpoint")

# Waiting this long for the previous write means checkpoints are requested
# faster than the disk commits them: worth a warning.
DEFAULT_SLOW_WAIT_SECONDS = 1.0


class BackgroundWriteError(RuntimeError):
    """A checkpoint written in the background failed; it was never committed.

    The original exception is the `__cause__`; `description` names the write.
    """

    def __init__(self, description: str, reason: str) -> None:
        super().__init__(f"writing {description} in the background failed: {reason}")
        self.description = description
        self.reason = reason

    def __reduce__(self):
        return (type(self), (self.description, self.reason))


class WriterBusyError(RuntimeError):
    """`submit()` was called while a write is still in flight (call `wait()` first)."""


class BackgroundWriter:
    """Runs one checkpoint write at a time on a thread; reports its failure later.

    Not thread-safe itself: one training loop (one thread) submits and waits.

    Args:
        name: the writer thread's name.
        slow_wait_seconds: `make_room()` warns when it blocked this long.
    """

    def __init__(
        self,
        name: str = "ftharness-checkpoint-writer",
        slow_wait_seconds: float = DEFAULT_SLOW_WAIT_SECONDS,
    ) -> None:
        self._name = name
        self._slow_wait_seconds = slow_wait_seconds
        self._thread: threading.Thread | None = None
        self._description = ""
        self._error: BaseException | None = None
        self._failed_description = ""

    @property
    def in_flight(self) -> str | None:
        """The description of the write in progress, or None."""
        if self._thread is not None and self._thread.is_alive():
            return self._description
        return None

    def submit(self, job: Callable[[], object], description: str) -> None:
        """Start `job` on the writer thread and return at once."""
        if self.in_flight is not None:
            raise WriterBusyError(f"{self._description} is still being written")
        self._raise_pending_error()
        self._description = description
        # Not a daemon: if the training script ends abruptly (an exception
        # out of fit()), the interpreter finishes this commit before exiting
        # rather than abandoning it half-written. A SIGKILL still can, which
        # the commit protocol makes harmless.
        self._thread = threading.Thread(
            target=self._run, args=(job, description), name=self._name, daemon=False
        )
        self._thread.start()

    def wait(self) -> float:
        """Block until no write is in flight; returns the seconds waited.

        Raises `BackgroundWriteError` (once) if the last write failed. There
        is no timeout on purpose: a write that never ends (a hung disk) is
        ended, with the process, by the supervisor's grace budget; giving up
        here would leave the newest state unsaved for no gain.
        """
        started = time.monotonic()
        thread = self._thread
        if thread is not None:
            thread.join()
            self._thread = None
        waited = time.monotonic() - started
        self._raise_pending_error()
        return waited

    def make_room(self) -> float:
        """`wait()` before taking the next snapshot; warns when that blocked long.

        A long wait here means saves are requested faster than the disk
        commits them, and training is running at disk speed.
        """
        description = self._description
        started = time.monotonic()
        try:
            return self.wait()
        finally:
            waited = time.monotonic() - started
            if waited >= self._slow_wait_seconds:
                log.warning(
                    "waited %.1f s for %s to be written before the next checkpoint: "
                    "checkpoints are requested faster than the disk commits them (save less "
                    "often to keep training at full speed)",
                    waited,
                    description,
                )

    def _run(self, job: Callable[[], object], description: str) -> None:
        try:
            job()
        except BaseException as error:
            # Logged now, with its traceback as text, then kept without
            # tracebacks: their frames hold the job, and so the snapshot, and
            # would pin its memory until the error is read.
            log.error(
                "writing %s in the background failed: %s\n%s",
                description,
                error,
                "".join(traceback.format_exception(error)).rstrip(),
            )
            _drop_tracebacks(error)
            self._failed_description = description
            self._error = error

    def _raise_pending_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise BackgroundWriteError(
                self._failed_description, str(error) or type(error).__name__
            ) from error


def _drop_tracebacks(error: BaseException) -> None:
    """Detach the tracebacks of `error` and of the exceptions chained to it."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = None
        pending += [current.__cause__, current.__context__]
