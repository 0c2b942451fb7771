"""The worker's side of the protocol, independent of the training framework.

A `WorkerSession` finds the checkpoint directory (the supervisor's, or the one
given when run alone), holds its lock, turns stop signals into a flag that
the training loop polls at step boundaries, and commits checkpoints with
retention. Framework integrations (`ftharness.keras`, `ftharness.tf`) build
on it; any other framework can follow the same protocol (docs/supervise.md).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from ftharness import fast_exit
from ftharness.checkpoint.local import (
    DELETE_ON_SUCCESS_MARKER,
    CheckpointRef,
    LoadedCheckpoint,
    LocalCheckpointStore,
)
from ftharness.checkpoint.lock import DirectoryLock, DirectoryLockedError
from ftharness.checkpoint.manifest import CheckpointError, WriterInfo
from ftharness.checkpoint.retry import CheckpointIOError
from ftharness.config import DEFAULT_KEEP, BackupLocation, WorkerEnvironment
from ftharness.exitcodes import ExitCode, exit_code_for_signal
from ftharness.logs import configure_logging, print_error
from ftharness.redact import redact_url

log = logging.getLogger("ftharness.worker")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
CHECKPOINT_SIGNAL = signal.SIGUSR1


class WorkerError(Exception):
    """An error that ends the worker with a documented exit code."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self):
        return (type(self), (self.message,))


class IncompatibleCheckpointError(WorkerError, CheckpointError):
    """The checkpoint was written by another model or another format."""

    exit_code = ExitCode.INCOMPATIBLE_CHECKPOINT


class TrainingArgumentsChangedError(WorkerError):
    """Training was restarted with other arguments (epochs, batch size, ...) than
    the checkpoint was written under; resuming would not continue the same run."""

    exit_code = ExitCode.USAGE_ERROR


class BackupDirUnusableError(WorkerError):
    exit_code = ExitCode.BACKUP_DIR_UNUSABLE


class BackupDirLockedError(WorkerError):
    exit_code = ExitCode.BACKUP_DIR_LOCKED


class ConfigurationError(WorkerError):
    exit_code = ExitCode.USAGE_ERROR


def exit_with(error: WorkerError) -> None:
    """End the worker the protocol's way: one line on stderr, a documented code."""
    print_error(error.message)
    raise SystemExit(int(error.exit_code))


class StopFlags:
    """Signals turned into flags; the handlers only record, never raise.

    An exception raised inside a handler can land anywhere, including in the
    middle of a checkpoint write; a flag is read at the next step boundary.
    """

    def __init__(self) -> None:
        self.stop_signal: int | None = None
        self._checkpoint_requested = False
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_stop)
        self._previous[CHECKPOINT_SIGNAL] = signal.signal(CHECKPOINT_SIGNAL, self._on_checkpoint)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def take_checkpoint_request(self) -> bool:
        requested, self._checkpoint_requested = self._checkpoint_requested, False
        return requested

    def _on_stop(self, signum, frame) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum

    def _on_checkpoint(self, signum, frame) -> None:
        self._checkpoint_requested = True


class WorkerSession:
    """Checkpoint directory, lock, signals and commits for one training run.

    Example::

        session = WorkerSession.open(backup_dir=None)   # the supervisor's directory
        loaded = session.load_latest()                  # None on a fresh start
        ...
        session.commit(step=100, epoch=1, batch=0, files={"state.json": [data]})
        if session.stopping:
            session.exit_preempted()
    """

    def __init__(
        self, store: LocalCheckpointStore, lock: DirectoryLock, keep: int, env: WorkerEnvironment
    ):
        self.store = store
        self.lock = lock
        self.keep = keep
        self.env = env
        self.writer = WriterInfo.current(env.run_id or "standalone")
        self.flags = StopFlags()

    @classmethod
    def open(
        cls, backup_dir: str | Path | None, keep: int | None = None, at_least: int = 1
    ) -> WorkerSession:
        """Resolve the directory and take (or inherit) its lock; raises WorkerError.

        `keep`: checkpoints kept (default: the supervisor's `--keep`, else 2),
        raised to `at_least` (Keras's `double_checkpoint` asks for 2).
        """
        try:
            env = WorkerEnvironment.from_environ()
        except ValueError as error:
            raise ConfigurationError(str(error)) from None
        if not logging.getLogger("ftharness").handlers:
            # Resume points and commits are worth a line on stderr, in the
            # supervisor's format (JSON lines under --log-format json).
            configure_logging(env.log_format or "text", env.log_level or "INFO")
        directory = _resolve_directory(backup_dir, env)
        keep = keep if keep is not None else (env.keep or DEFAULT_KEEP)
        if keep < 1:
            raise ConfigurationError(f"keep must be >= 1, got {keep}")
        keep = max(keep, at_least)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise BackupDirUnusableError(
                f"backup directory {directory} is not usable: {error.strerror or error}"
            ) from None
        store = LocalCheckpointStore(directory)
        if env.lock_fd is not None:
            try:
                lock = DirectoryLock.inherited(directory, env.lock_fd)
            except ValueError as error:
                raise ConfigurationError(str(error)) from None
        else:
            try:
                lock = DirectoryLock.acquire(
                    directory, run_id=env.run_id or "standalone", role="worker"
                )
            except DirectoryLockedError as error:
                raise BackupDirLockedError(str(error)) from None
            except OSError as error:
                raise BackupDirUnusableError(
                    f"backup directory {directory} is not usable: {error.strerror or error}"
                ) from None
            # Alone, we are the only writer now: what a crashed writer left goes.
            store.remove_stale_temporaries()
        return cls(store, lock, keep, env)

    def load_latest(self) -> LoadedCheckpoint | None:
        """The newest checkpoint that verifies; BackupDirUnusableError (73) when
        the directory cannot be read: an I/O error is not a corrupt checkpoint,
        and nothing is moved aside or skipped for it."""
        try:
            return self.store.load_latest()
        except CheckpointIOError as error:
            raise BackupDirUnusableError(str(error)) from None

    def commit(
        self,
        *,
        step: int,
        epoch: int,
        batch: int,
        files: Mapping[str, Iterable[bytes | memoryview]],
    ) -> CheckpointRef:
        ref = self.store.commit(
            step=step, epoch=epoch, batch=batch, files=files, writer=self.writer
        )
        # The final checkpoint keeps one more and leaves that deletion to the
        # next run's first commit: unlinking the oldest 400 MB checkpoint took
        # 110-130 ms here, beside 290 ms to write the new one, time the grace
        # period needs for the exit. At most `keep + 1` remain.
        self.store.apply_retention(self.keep + 1 if self.stopping else self.keep)
        return ref

    @property
    def stopping(self) -> bool:
        """A stop signal arrived: the next commit is the final checkpoint."""
        return self.flags.stop_signal is not None

    def exit_preempted(self) -> None:
        """Leave with the protocol's code for the stop signal received.

        The stack unwinds as for any SystemExit; the interpreter's slow
        teardown is skipped (`fast_exit`): the checkpoint is already durable.
        """
        signum = self.flags.stop_signal or signal.SIGTERM
        log.info("final checkpoint committed; exiting on %s", signal.Signals(signum).name)
        fast_exit.end_after_atexit(exit_code_for_signal(signum))
        raise SystemExit(exit_code_for_signal(signum))

    def finish(self, *, delete_backup: bool) -> None:
        """The job's training succeeded: remove its backup if asked, then `close()`.

        Alone, the backup's ftharness files go now (`remove_backup`). Under
        `ftharness supervise` nothing is removed here: a crash after training
        (in evaluation, in `model.save`) must still resume from the end of
        training. The worker leaves `DELETE_ON_SUCCESS_MARKER` instead, and
        the supervisor removes the backup, locally and remotely, once the
        command exits 0.
        """
        try:
            if not delete_backup:
                return
            if self.env.supervised:
                marker = self.store.directory / DELETE_ON_SUCCESS_MARKER
                marker.parent.mkdir(parents=True, exist_ok=True)
                record = {"run_id": self.env.run_id, "pid": os.getpid(), "time": time.time()}
                marker.write_text(json.dumps(record))
                log.info("training done; the supervisor removes the backup if the job exits 0")
            else:
                self.store.remove_backup()
                log.info("training finished; backup %s removed", self.store.directory)
        finally:
            self.close()

    def close(self) -> None:
        self.flags.uninstall()
        # An inherited lock belongs to the supervisor; closing our copy of
        # the descriptor would not release it, but keep it for our children.
        if self.env.lock_fd is None:
            self.lock.release()


def _resolve_directory(backup_dir: str | Path | None, env: WorkerEnvironment) -> Path:
    if env.checkpoint_dir is not None:
        if (
            backup_dir is not None
            and Path(backup_dir).expanduser().resolve() != env.checkpoint_dir.resolve()
        ):
            log.info(
                "running under ftharness supervise: checkpoints go to %s, not to backup_dir=%s",
                env.checkpoint_dir,
                backup_dir,
            )
        return env.checkpoint_dir
    if backup_dir is None:
        raise ConfigurationError(
            "no backup directory: pass backup_dir=... or run under `ftharness supervise`"
        )
    try:
        location = BackupLocation.parse(str(backup_dir))
    except ValueError as error:
        raise ConfigurationError(str(error)) from None
    if not location.is_local:
        raise ConfigurationError(
            f"{redact_url(location.url)}: a worker writes to a local directory; give remote "
            "URLs to `ftharness supervise --backup-dir`"
        )
    return location.local_path
