"""A lease on a remote prefix: one writer per backup URL, without locks.

Object stores have no locks, but they have create-only writes (S3
`If-None-Match: *`, GCS `ifGenerationMatch=0`, O_EXCL locally). The lease is a
sequence of records `.ftharness/lease-<seq>.json`, each created create-only,
each carrying holder and expiry; the record with the highest sequence number
is the current one. The sequence number plays the part of a generation:

- acquire: the current record is absent, released or expired -> create
  `seq + 1`. Two contenders race for the same name; the store lets one win.
- renew: create `seq + 1` with a later expiry. If that name is taken, someone
  judged our lease expired and took over: we have lost it and must stop.
- release: create `seq + 1` marked released, so the next run need not wait.

Expiry compares wall clocks of different machines: keep the TTL well above
the clock skew you expect (the default is 60 s; renewals every TTL / 3).

`LeaseKeeper` renews on its own timer thread, so a long upload never lets the
lease lapse, and answers `check()` right before anything is committed or
deleted: a holder that lost its lease (taken over, or not renewed within the
TTL by its own clock) writes and deletes nothing more.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import re
import socket
import threading
import time
from dataclasses import asdict, dataclass

import fsspec

from ftharness.checkpoint.layout import LEASE_RECORD_PREFIX, STATE_DIR
from ftharness.checkpoint.remote import create_only
from ftharness.redact import describe_error

log = logging.getLogger("ftharness.lease")

LEASE_DIR = STATE_DIR
_RECORD = re.compile(rf"{LEASE_RECORD_PREFIX}(\d{{12}})\.json$")


class LeaseHeldError(RuntimeError):
    """Another live run holds the lease."""

    def __init__(self, url: str, holder: str) -> None:
        super().__init__(f"{url} is leased by another run ({holder})")
        self.url = url
        self.holder = holder

    def __reduce__(self):
        return (type(self), (self.url, self.holder))


class LeaseLostError(RuntimeError):
    """Our lease was taken over: we must stop writing."""


@dataclass(frozen=True)
class LeaseRecord:
    sequence: int
    host: str
    pid: int
    run_id: str
    expires: float  # time.time() seconds
    released: bool = False

    def live(self, now: float) -> bool:
        return not self.released and self.expires > now

    def describe(self, now: float) -> str:
        return (
            f"supervisor pid {self.pid} on host {self.host}, run {self.run_id}, "
            f"lease expires in {self.expires - now:.0f} s"
        )


class RemoteLease:
    """Acquire, renew and release the lease of one remote prefix.

    Example::

        lease = RemoteLease(fs, "bucket/run-7", run_id="r1", ttl=60)
        lease.acquire()          # LeaseHeldError if another run holds it
        lease.renew()            # every ttl / 3; LeaseLostError if taken over
        lease.release()
    """

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, run_id: str, ttl: float = 60.0):
        if ttl <= 0:
            raise ValueError("the lease TTL must be > 0")
        self.fs = fs
        self.directory = posixpath.join(root, LEASE_DIR)
        self.run_id = run_id
        self.ttl = ttl
        self.sequence: int | None = None  # of our newest record, while we hold it

    @property
    def held(self) -> bool:
        return self.sequence is not None

    def current(self) -> LeaseRecord | None:
        """The record with the highest sequence number, freshly listed."""
        self.fs.invalidate_cache(self.directory)
        try:
            names = self.fs.ls(self.directory, detail=False)
        except FileNotFoundError:
            return None
        sequences = sorted(int(match.group(1)) for name in names if (match := _RECORD.search(name)))
        for sequence in reversed(sequences):
            try:
                return self._read(sequence)
            except (FileNotFoundError, ValueError, KeyError):
                continue  # pruned or half-visible: the previous one speaks
        return None

    def acquire(self) -> None:
        for _ in range(5):  # a lost race with a renewal or a contender: look again
            record = self.current()
            now = time.time()
            if record is not None and record.live(now):
                raise LeaseHeldError(self.url, record.describe(now))
            next_sequence = 0 if record is None else record.sequence + 1
            if self._create(next_sequence, released=False):
                if record is not None and not record.live(now) and not record.released:
                    log.warning("took over an expired lease of %s", record.describe(now))
                return
        raise LeaseHeldError(self.url, "contended: another run keeps taking it")

    def renew(self) -> None:
        if self.sequence is None:
            raise LeaseLostError(f"{self.url}: no lease to renew")
        if not self._create(self.sequence + 1, released=False):
            self.sequence = None
            raise LeaseLostError(f"{self.url}: the lease was taken over by another run")
        # A record above ours means another writer's line of records (its
        # directory was wiped under it, say): two holders, and ours yields.
        newest = self.current()
        if newest is not None and newest.sequence > self.sequence:
            self.sequence = None
            raise LeaseLostError(f"{self.url}: another run holds a newer lease record")
        self._prune()

    def confirm(self) -> None:
        """Read the lease back: LeaseLostError unless our record is still the newest."""
        sequence = self.sequence
        if sequence is None:
            raise LeaseLostError(f"{self.url}: the lease is not held")
        newest = self.current()
        if newest is None or newest.sequence != sequence:
            self.sequence = None
            raise LeaseLostError(f"{self.url}: the lease was taken over by another run")

    def release(self) -> None:
        if self.sequence is None:
            return
        self._create(self.sequence + 1, released=True)
        self.sequence = None

    @property
    def url(self) -> str:
        return posixpath.dirname(self.directory)

    def _create(self, sequence: int, released: bool) -> bool:
        record = LeaseRecord(
            sequence=sequence,
            host=socket.gethostname(),
            pid=os.getpid(),
            run_id=self.run_id,
            expires=time.time() + self.ttl,
            released=released,
        )
        try:
            create_only(self.fs, self._path(sequence), json.dumps(asdict(record)).encode())
        except FileExistsError:
            return False
        self.sequence = None if released else sequence
        return True

    def _read(self, sequence: int) -> LeaseRecord:
        record = json.loads(self.fs.cat_file(self._path(sequence)))
        return LeaseRecord(**record)

    def _path(self, sequence: int) -> str:
        return posixpath.join(self.directory, f"{LEASE_RECORD_PREFIX}{sequence:012d}.json")

    def _prune(self) -> None:
        # Old records only grow the listing; keep a few for the curious.
        if self.sequence is None or self.sequence < 8:
            return
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(self.sequence - 8))


class LeaseKeeper:
    """Keeps a held lease alive on its own timer, and says when it is lost.

    Renews every `ttl / 3`; a failed renewal is retried every second. The
    lease counts as lost when a renewal finds it taken over, or when no
    renewal succeeded for `ttl` less a safety margin by our own monotonic
    clock (another run, judging by its wall clock, may take it over then).
    Loss is final and logged once.

    Example::

        keeper = LeaseKeeper(lease)          # lease.acquire() done before
        keeper.start()
        keeper.check()                       # before every commit or deletion
        keeper.stop()
    """

    def __init__(self, lease: RemoteLease) -> None:
        self.lease = lease
        self._lost = threading.Event()
        self._stopping = threading.Event()
        self._renewing = threading.Lock()  # one renewal or confirmation at a time
        # A lease is valid for `ttl` from the moment its record was written;
        # counting from before the write keeps us on the safe side.
        self._margin = lease.ttl / 6
        self._valid_until = time.monotonic() + lease.ttl - self._margin
        self._thread = threading.Thread(target=self._run, name="ftharness-lease", daemon=True)
        self._started = False

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def start(self) -> None:
        """Start renewing; calling it again is harmless."""
        if not self._started:
            self._started = True
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def check(self) -> None:
        """LeaseLostError unless the lease is ours right now (read back from the store)."""
        if self._lost.is_set():
            raise LeaseLostError(f"{self.lease.url}: the lease was lost")
        if time.monotonic() >= self._valid_until:
            self._lose(LeaseLostError(f"{self.lease.url}: the lease was not renewed in time"))
        with self._renewing:
            try:
                self.lease.confirm()
            except LeaseLostError as error:
                self._lose(error)
            except Exception as error:  # cannot tell: act as if lost, for this write only
                raise LeaseLostError(
                    f"{self.lease.url}: the lease could not be checked ({describe_error(error)})"
                ) from None

    def _lose(self, error: LeaseLostError) -> None:
        if not self._lost.is_set():
            self._lost.set()
            self.lease.sequence = None
            log.error("%s; uploads stop", error, extra={"event": "lease_lost"})
        raise error

    def _run(self) -> None:
        interval = self.lease.ttl / 3
        wait = interval
        while not self._stopping.wait(wait) and not self._lost.is_set():
            started = time.monotonic()
            try:
                with self._renewing:
                    self.lease.renew()
            except LeaseLostError as error:
                with contextlib.suppress(LeaseLostError):
                    self._lose(error)
                return
            except Exception as error:  # the store's errors: try again soon
                log.warning("lease renewal failed (%s); retrying", describe_error(error))
                if time.monotonic() >= self._valid_until:
                    with contextlib.suppress(LeaseLostError):
                        self._lose(LeaseLostError(f"{self.lease.url}: the lease expired"))
                    return
                wait = min(1.0, interval)
                continue
            self._valid_until = started + self.lease.ttl - self._margin
            wait = interval
