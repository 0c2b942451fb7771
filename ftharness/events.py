"""The run's record: one JSON file per attempt, beside the checkpoints.

`ftharness status` and `ftharness timeline` tell what a run did from these
files, without its logs. The supervisor keeps them through a `RunRecorder`::

    <checkpoint dir>/.ftharness/events/<run id>-<session>-attempt-0003.json

One file per attempt, rewritten whole as the attempt progresses (launched,
each checkpoint seen, stop requested, a heartbeat) and final once it ended.
Nothing is ever appended: an object store can hold the same file (one PUT
replaces it), and a reader never sees a half-written record (locally: a
temporary file, then a rename).

`session` names one supervisor process (its UTC start time and a random
token). Run ids are often reused (a Kubernetes Job's name) and attempt
numbers start again at 1 in every supervisor, so names without it would
collide after the first preemption.

A record, format version 1 (times are Unix seconds, `time.time()`)::

    {"format": "ftharness-attempt", "format_version": 1,
     "run_id": "r1", "session": "20250101T020304Z-ab12", "attempt": 2,
     "host": "vm-7", "supervisor_pid": 1, "worker_pid": 12,
     "launched_at": 1735697000.1, "start_step": 40,
     "checkpoints": [{"step": 45, "committed_at": 1735697010.2,
                      "seen_at": 1735697010.9, "bytes": 1234}],
     "stop": {"signal": "SIGTERM", "requested_at": 1735697011.0},
     "end": {"ended_at": 1735697011.8, "outcome": "stopped", "exit_code": 143,
             "exit_signal": null, "final_step": 47, "stop_seconds": 0.8},
     "updated_at": 1735697011.8}

`stop` and `end` are null until they happen; a record whose `end` is null
belongs to an attempt still running, or to a supervisor that died with its
machine (then `updated_at` is the last heartbeat). `outcome` is one of
`ftharness.policy.Outcome`: finished, stopped, fatal, crashed, and in a
multi-worker group peer_stopped, peer_lost (an older ftharness tells these
two as crashes).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol

from ftharness import strict_json
from ftharness.checkpoint.layout import EVENTS_DIR
from ftharness.checkpoint.lease import RemoteLease
from ftharness.checkpoint.local import CheckpointRef, LocalCheckpointStore
from ftharness.checkpoint.manifest import CheckpointError
from ftharness.checkpoint.remote import RemoteCheckpointStore
from ftharness.policy import Outcome
from ftharness.process import ExitStatus
from ftharness.record_sinks import (
    LocalRecordSink,
    MirroredRecordSink,
    RecordSink,
    StoreRecordSink,
)

log = logging.getLogger("ftharness.events")

RECORD_FORMAT = "ftharness-attempt"
RECORD_FORMAT_VERSION = 1
__all__ = [
    "EVENTS_DIR",
    "LocalRecordSink",
    "ObserverGroup",
    "RecordSink",
    "RunRecorder",
    "commits_since",
    "newest_commit",
]
# How often a running attempt's record is rewritten when nothing else
# happens: bounds how late `status` learns that a machine vanished.
HEARTBEAT_SECONDS = 30.0
# A record is a few kilobytes; one of megabytes is not ours.
MAX_RECORD_BYTES = 4 * 1024 * 1024


class RecordError(ValueError):
    """An event record that cannot be read (another format, a torn copy)."""


@dataclass(frozen=True)
class CommitSeen:
    """A committed checkpoint, as the supervisor saw it."""

    step: int
    committed_at: float  # the manifest's `created`: the writer's clock, at commit
    seen_at: float  # when the supervisor's watch found it (up to one poll later)
    bytes: int  # the sizes of its data files, from the manifest


@dataclass(frozen=True)
class StopRequest:
    signal: str  # "SIGTERM"
    requested_at: float


@dataclass(frozen=True)
class AttemptEnd:
    ended_at: float
    outcome: str  # an `Outcome` value
    exit_code: int | None
    exit_signal: str | None  # "SIGKILL" when a signal ended the worker
    final_step: int | None  # the newest committed step once the attempt ended
    stop_seconds: float | None  # stop request -> exit, measured (monotonic clock)


@dataclass(frozen=True)
class AttemptRecord:
    run_id: str
    session: str
    attempt: int  # 1 for a supervisor's first launch (FTHARNESS_ATTEMPT)
    host: str
    supervisor_pid: int
    worker_pid: int
    launched_at: float
    start_step: int | None  # the newest committed step at launch: the restore point
    updated_at: float
    checkpoints: tuple[CommitSeen, ...] = ()
    stop: StopRequest | None = None
    end: AttemptEnd | None = None

    @property
    def file_name(self) -> str:
        return f"{_safe(self.run_id)}-{self.session}-attempt-{self.attempt:04d}.json"

    def to_json(self) -> str:
        record = {"format": RECORD_FORMAT, "format_version": RECORD_FORMAT_VERSION}
        record.update(asdict(self))
        return json.dumps(record, indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> AttemptRecord:
        try:
            record = strict_json.loads(text, MAX_RECORD_BYTES)
            if record.get("format") != RECORD_FORMAT:
                raise ValueError(f"not an {RECORD_FORMAT} record")
            if int(record["format_version"]) > RECORD_FORMAT_VERSION:
                raise ValueError(
                    f"format version {record['format_version']} is newer than this "
                    "ftharness reads; upgrade ftharness"
                )
            stop, end = record.get("stop"), record.get("end")
            return cls(
                run_id=str(record["run_id"]),
                session=str(record["session"]),
                attempt=int(record["attempt"]),
                host=str(record["host"]),
                supervisor_pid=int(record["supervisor_pid"]),
                worker_pid=int(record["worker_pid"]),
                launched_at=float(record["launched_at"]),
                start_step=None if record["start_step"] is None else int(record["start_step"]),
                updated_at=float(record["updated_at"]),
                checkpoints=tuple(CommitSeen(**entry) for entry in record["checkpoints"]),
                stop=StopRequest(**stop) if stop else None,
                end=AttemptEnd(**end) if end else None,
            )
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as error:
            raise RecordError(str(error)) from None


def read_records(files: Sequence[tuple[str, bytes]]) -> tuple[list[AttemptRecord], list[str]]:
    """Parse `(name, content)` pairs: the records in launch order, and the problems."""
    records, problems = [], []
    for name, content in files:
        try:
            records.append(AttemptRecord.from_json(content))
        except RecordError as error:
            problems.append(f"{name}: unreadable event record ({error})")
    records.sort(key=lambda record: (record.launched_at, record.session, record.attempt))
    return records, problems


# -- what the supervisor reports ---------------------------------------------------


class AttemptObserver(Protocol):
    """What the supervisor tells about each attempt (the recorder, the metrics)."""

    def attempt_launched(self, attempt: int, pid: int, start: CommitSeen | None) -> None: ...

    def checkpoints_committed(self, commits: Sequence[CommitSeen]) -> None: ...

    def stop_requested(self, signum: int) -> None: ...

    def attempt_ended(
        self,
        status: ExitStatus,
        outcome: Outcome,
        final_step: int | None,
        stop_seconds: float | None,
    ) -> None: ...

    def heartbeat(self) -> None: ...


class ObserverGroup:
    """Tells every observer, in order; the supervisor holds one of these."""

    def __init__(self, *observers: AttemptObserver) -> None:
        self.observers = observers

    def attempt_launched(self, attempt: int, pid: int, start: CommitSeen | None) -> None:
        for observer in self.observers:
            observer.attempt_launched(attempt, pid, start)

    def checkpoints_committed(self, commits: Sequence[CommitSeen]) -> None:
        if commits:
            for observer in self.observers:
                observer.checkpoints_committed(commits)

    def stop_requested(self, signum: int) -> None:
        for observer in self.observers:
            observer.stop_requested(signum)

    def attempt_ended(
        self,
        status: ExitStatus,
        outcome: Outcome,
        final_step: int | None,
        stop_seconds: float | None,
    ) -> None:
        for observer in self.observers:
            observer.attempt_ended(status, outcome, final_step, stop_seconds)

    def heartbeat(self) -> None:
        for observer in self.observers:
            observer.heartbeat()


class RunRecorder:
    """Keeps the current attempt's record up to date in a `RecordSink`.

    Recording never stops supervision: a record that cannot be written (disk
    full, permissions) is logged once and retried at the next event.

    Example::

        recorder = RunRecorder.beside(Path("backups"), run_id="r1")
        recorder.attempt_launched(1, pid, start=newest_commit(store))
        recorder.checkpoints_committed(commits_since(store, after=None))
        recorder.attempt_ended(status, Outcome.FINISHED, final_step=80, stop_seconds=None)
    """

    def __init__(self, sink: RecordSink, run_id: str, session: str | None = None) -> None:
        self.sink = sink
        self.run_id = run_id
        self.session = session or new_session()
        self.record: AttemptRecord | None = None
        self._written_at = 0.0
        self._failing = False

    @classmethod
    def beside(
        cls,
        checkpoint_dir: Path,
        run_id: str,
        remote: RemoteCheckpointStore | None = None,
        lease: RemoteLease | None = None,
    ) -> RunRecorder:
        """Records in the checkpoint directory, mirrored to `remote` while `lease` is held."""
        sink: RecordSink = LocalRecordSink(checkpoint_dir / EVENTS_DIR)
        if remote is not None:
            held = (lambda: lease.held) if lease is not None else (lambda: True)
            sink = MirroredRecordSink(sink, StoreRecordSink(remote), held)
        return cls(sink, run_id)

    def attempt_launched(self, attempt: int, pid: int, start: CommitSeen | None) -> None:
        now = time.time()
        self.record = AttemptRecord(
            run_id=self.run_id,
            session=self.session,
            attempt=attempt,
            host=socket.gethostname(),
            supervisor_pid=os.getpid(),
            worker_pid=pid,
            launched_at=now,
            start_step=start.step if start else None,
            updated_at=now,
        )
        self._write()

    def checkpoints_committed(self, commits: Sequence[CommitSeen]) -> None:
        if self.record is None or not commits:
            return
        self.record = replace(self.record, checkpoints=(*self.record.checkpoints, *commits))
        self._write()

    def stop_requested(self, signum: int) -> None:
        if self.record is None:
            return
        stop = StopRequest(signal.Signals(signum).name, time.time())
        self.record = replace(self.record, stop=stop)
        self._write()

    def attempt_ended(
        self,
        status: ExitStatus,
        outcome: Outcome,
        final_step: int | None,
        stop_seconds: float | None,
    ) -> None:
        if self.record is None:
            return
        end = AttemptEnd(
            ended_at=time.time(),
            outcome=outcome.value,
            exit_code=status.code,
            exit_signal=signal.Signals(status.signal).name if status.signal else None,
            final_step=final_step,
            stop_seconds=round(stop_seconds, 3) if stop_seconds is not None else None,
        )
        self.record = replace(self.record, end=end)
        self._write()

    def flush(self, timeout: float) -> bool:
        """Wait until the records are in every place they are mirrored to; False on timeout."""
        flush = getattr(self.sink, "flush", None)
        return flush(timeout) if flush is not None else True

    def heartbeat(self) -> None:
        running = self.record is not None and self.record.end is None
        if running and time.time() - self._written_at >= HEARTBEAT_SECONDS:
            self._write()

    def _write(self) -> None:
        if self.record is None:
            return
        now = time.time()
        record = self.record = replace(self.record, updated_at=now)
        try:
            self.sink.write(record.file_name, record.to_json().encode())
        except OSError as error:
            if not self._failing:
                log.warning(
                    "cannot write the run's event record %s: %s (supervision goes on)",
                    record.file_name,
                    error,
                    extra={"event": "record_unwritable"},
                )
            self._failing = True
            return
        self._failing = False
        self._written_at = now


# -- reading checkpoints for the record --------------------------------------------


def commits_since(store: LocalCheckpointStore, after: int | None) -> list[CommitSeen]:
    """Committed checkpoints newer than step `after`, oldest first.

    With retention, a checkpoint committed and deleted between two watches is
    never seen; the record lists what was there to see.
    """
    refs = [ref for ref in store.list_committed() if after is None or ref.step > after]
    return _seen(store, refs)


def newest_commit(store: LocalCheckpointStore) -> CommitSeen | None:
    """The newest committed checkpoint (the one the next attempt restores)."""
    commits = _seen(store, store.list_committed()[-1:])
    return commits[-1] if commits else None


def _seen(store: LocalCheckpointStore, refs: Sequence[CheckpointRef]) -> list[CommitSeen]:
    seen_at = time.time()
    commits = []
    for ref in refs:
        try:
            manifest = store.read_manifest(ref)
        except CheckpointError:
            continue  # deleted by retention since the listing, or corrupt: not a commit
        size = sum(entry.size for entry in manifest.files.values())
        commits.append(CommitSeen(ref.step, manifest.created, seen_at, size))
    return commits


def new_session() -> str:
    """Sorts by start time; the token tells apart supervisors started together."""
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(2)}"


def _safe(run_id: str) -> str:
    # A run id is the user's: keep it readable, but never a path.
    return re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)[:64] or "run"
