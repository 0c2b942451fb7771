"""Processes: spawn in a process group, forward signals, reap, decode status.

Signals reach the supervisor through a self-pipe (`signal.set_wakeup_fd`):
the handlers do nothing, the C-level handler writes the signal number into
the pipe, and the main loop reads it when it is ready. Nothing runs inside a
handler, so no exception can land in the middle of our own work.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import logging
import os
import select
import signal
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import psutil

log = logging.getLogger("ftharness.process")

# The signals the supervisor takes: stop requests, "checkpoint now", children.
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD)
_PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


@dataclass(frozen=True)
class ExitStatus:
    """How a process ended: an exit code or a terminating signal."""

    code: int | None = None
    signal: int | None = None

    @classmethod
    def from_wait_status(cls, status: int) -> ExitStatus:
        if os.WIFSIGNALED(status):
            return cls(signal=os.WTERMSIG(status))
        return cls(code=os.waitstatus_to_exitcode(status))

    @property
    def shell_code(self) -> int:
        """The code a shell would report: the exit code, or 128 + signal."""
        return 128 + self.signal if self.signal is not None else int(self.code or 0)

    def describe(self) -> str:
        if self.signal is not None:
            return f"killed by {signal.Signals(self.signal).name}"
        return f"exit code {self.code}"


# The byte `post()` writes: no signal has number 0, so it cannot be mistaken.
_POSTED = 0


class SignalInbox:
    """Signals as data: `wait()` returns the ones that arrived, in order."""

    def __init__(self, signals: Iterable[int] = HANDLED_SIGNALS) -> None:
        self._read_fd, self._write_fd = os.pipe()
        self._posted: collections.deque = collections.deque()  # append/popleft: thread-safe
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._previous_wakeup_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._previous_handlers = {
            signum: signal.signal(signum, _ignore_in_handler) for signum in signals
        }

    def post(self, message: object) -> None:
        """Thread-safe: queue `message` (a cloud's notice) and wake `wait()`.

        It comes out of `wait()` as itself, not as a signal, so the main loop
        can tell a notice from a user's SIGUSR1.
        """
        self._posted.append(message)
        # A full pipe means the loop is awake anyway.
        with contextlib.suppress(BlockingIOError):
            os.write(self._write_fd, bytes([_POSTED]))

    def wait(self, timeout: float | None) -> list[int | object]:
        """Block up to `timeout` seconds; returns signal numbers and posted messages."""
        if timeout is not None and timeout < 0:
            timeout = 0
        ready, _, _ = select.select([self._read_fd], [], [], timeout)
        if not ready:
            return []
        try:
            data = os.read(self._read_fd, 512)
        except BlockingIOError:
            return []
        arrived: list[int | object] = [signum for signum in data if signum != _POSTED]
        while self._posted:
            arrived.append(self._posted.popleft())
        return arrived

    def close(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        os.close(self._read_fd)
        os.close(self._write_fd)


def _ignore_in_handler(signum, frame) -> None:
    """The wakeup fd already carries the signal; the main loop acts on it."""


class CommandNotFound(OSError):
    pass


class CommandNotExecutable(OSError):
    pass


def spawn_in_new_group(command: Sequence[str], env: Mapping[str, str]) -> int:
    """Start `command` as the leader of a new process group; returns its pid.

    posix_spawn rather than subprocess: it resets the signal dispositions
    Python changed (SIGPIPE, SIGXFSZ ignored; our handlers) in the child, and
    reports exec failures here, where they become 126 and 127.
    """
    reset = {signal.SIGPIPE, signal.SIGXFSZ, *HANDLED_SIGNALS}
    try:
        return os.posix_spawnp(
            command[0],
            list(command),
            dict(env),
            setpgroup=0,
            setsigmask=(),
            setsigdef=reset,
        )
    except FileNotFoundError as error:
        raise CommandNotFound(error.errno, f"command not found: {command[0]}") from None
    except (PermissionError, IsADirectoryError) as error:
        raise CommandNotExecutable(
            error.errno, f"cannot execute {command[0]}: permission denied"
        ) from None
    except OSError as error:
        if error.errno == errno.ENOEXEC:
            raise CommandNotExecutable(
                error.errno, f"cannot execute {command[0]}: exec format error"
            ) from None
        raise


def signal_group(pgid: int, signum: int) -> bool:
    """Send `signum` to a process group; a group already gone is not an error."""
    try:
        os.killpg(pgid, signum)
        return True
    except ProcessLookupError:
        log.debug("process group %d is gone; %s not delivered", pgid, signal.Signals(signum).name)
        return False


def reap_children() -> dict[int, ExitStatus]:
    """Collect every exited child (our worker and, as PID 1, orphans)."""
    reaped = {}
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped[pid] = ExitStatus.from_wait_status(status)


def become_subreaper() -> bool:
    """Adopt orphaned descendants, as PID 1 would (Linux only).

    Then a worker's grandchildren that outlive it are re-parented to us, so we
    can reap and clean them up even when we are not PID 1.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def kill_descendants() -> list[int]:
    """SIGKILL every process still below us (leftovers of a finished worker)."""
    try:
        leftovers = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    killed = []
    for process in leftovers:
        try:
            process.kill()
            killed.append(process.pid)
        except psutil.NoSuchProcess:
            pass
    return killed
