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

A write in flight can be abandoned (`abandon()`): the final checkpoint
after a stop signal holds newer state than any periodic write still in
flight, so finishing that write would only spend the grace period's disk
bandwidth on a checkpoint that is superseded a moment later. The job's
file data goes through `abandonable(chunks)`, which stops at the next piece
(`WriteAbandoned`); the commit protocol then leaves at most a `.tmp-`
directory, which is never loaded, and removes it on the writer thread while
the final checkpoint is already being written. Once every byte of its data
is handed to the kernel the write is nearly done (fsync, manifest, rename)
and it is waited for: abandoning it then would still wait for its pages
under writeback, and its commit must not run beside the next one's.

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

import enum
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator

from ftharness.checkpoint.durable import PIECE_BYTES

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


class WriteAbandoned(Exception):
    """Raised inside a write that `BackgroundWriter.abandon()` stopped; never committed."""

    def __init__(self, description: str) -> None:
        super().__init__(f"{description} was abandoned")
        self.description = description


class AbandonOutcome(enum.Enum):
    """What became of the write in flight when `abandon()` was called."""

    NOTHING_IN_FLIGHT = "nothing in flight"
    ABANDONED = "abandoned"  # stopped before its commit: only a temporary was left
    FINISHED = "finished"  # past its last piece: it committed
    FAILED = "failed"  # it failed on its own (logged when it happened)


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
        self._control = _Control()  # the running job's: abandon() talks to it
        # Abandoned writes still removing their temporary directory: they run
        # beside the next write (they only delete their own files).
        self._cleaning: list[threading.Thread] = []

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
        self._control = control = _Control()
        # Not a daemon: if the training script ends abruptly (an exception
        # out of fit()), the interpreter finishes this commit before exiting
        # rather than abandoning it half-written. A SIGKILL still can, which
        # the commit protocol makes harmless.
        self._thread = threading.Thread(
            target=self._run, args=(job, description, control), name=self._name, daemon=False
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
        while self._cleaning:
            self._cleaning.pop().join()
        waited = time.monotonic() - started
        self._raise_pending_error()
        return waited

    def abandonable(self, chunks: Iterable[bytes | memoryview]) -> Iterator[memoryview]:
        """`chunks` as byte pieces of at most PIECE_BYTES (no copies), raising
        `WriteAbandoned` before the next piece once `abandon()` was called."""
        control = self._control  # at the first piece: the job writing it
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            for start in range(0, len(view), PIECE_BYTES):
                if control.abandon.is_set():
                    control.abandoned = True
                    control.stopped.set()
                    raise WriteAbandoned(self._description)
                yield view[start : start + PIECE_BYTES]

    def abandon(self) -> AbandonOutcome:
        """Stop the write in flight at its next piece; return once it writes no more.

        A write stopped so is never committed and raises nothing later; it
        removes its temporary directory on its thread, beside the caller's
        next write (`wait()` waits for that too). A write already past its
        last piece is waited for to its end: its commit (manifest, rename,
        retention) must not run beside the next one's. A write that failed on
        its own was logged when it failed and is not raised again: the caller
        is about to write newer state.
        """
        thread = self._thread
        if thread is None:
            return AbandonOutcome.NOTHING_IN_FLIGHT
        control, description = self._control, self._description
        started = time.monotonic()
        control.abandon.set()
        control.stopped.wait()
        self._thread = None
        if control.abandoned:
            outcome = AbandonOutcome.ABANDONED
            self._cleaning.append(thread)
        else:
            thread.join()
            error, self._error = self._error, None
            outcome = AbandonOutcome.FINISHED if error is None else AbandonOutcome.FAILED
        log.info(
            "the background write of %s was %s for the final checkpoint (%.3f s)",
            description,
            "abandoned" if outcome is AbandonOutcome.ABANDONED else f"{outcome.value}, waited",
            time.monotonic() - started,
        )
        return outcome

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

    def _run(self, job: Callable[[], object], description: str, control: _Control) -> None:
        try:
            job()
        except WriteAbandoned:
            pass  # asked for (abandon()): not an error
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
        finally:
            control.stopped.set()

    def _raise_pending_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise BackgroundWriteError(
                self._failed_description, str(error) or type(error).__name__
            ) from error


class _Control:
    """Between `abandon()` and one job's `abandonable()` stream."""

    def __init__(self) -> None:
        self.abandon = threading.Event()  # asked to stop
        self.stopped = threading.Event()  # it writes no more: stopped, or ended
        self.abandoned = False  # it stopped because asked (before its commit)


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
