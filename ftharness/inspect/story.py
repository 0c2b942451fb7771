"""A run's story from its event records: attempts, interruptions, lost work, goodput.

What is exact and what is estimated
-----------------------------------
Exact (the supervisor saw it happen; times to the clock's precision):
  launches and ends of attempts, how each ended (exit code or signal, and
  whether we had asked it to stop), the step each attempt restarted from,
  the checkpoints it committed (the manifest's own commit time), the time
  from a stop request to the worker's exit (the final checkpoint), and the
  idle time between attempts (restart backoff; no supervisor running).

Estimated (the supervisor cannot see training steps, only checkpoints):
  pace       seconds per step: the median, over consecutive checkpoints of
             one attempt committed before any stop request, of time / steps.
             It includes the periodic saves, as an uninterrupted run would.
  startup    launch -> first training step: process and framework start,
             model build, restore. Extrapolated back from the attempt's first
             checkpoint at the pace; an attempt without one gets the median
             of the others. Restore is not told apart from the rest.
  lost work  what an interruption made the run train again. A clean
             preemption (the worker exited 128 + signal after its final
             checkpoint) and a finished attempt lose nothing. Otherwise the
             next attempt restarts from the newest committed step (exact),
             and the seconds trained past it are estimated as
             end (or stop request) - the attempt's last commit (or, without
             one, its estimated start of training); steps = seconds / pace,
             at most one save interval (the attempt would have committed
             again). An attempt whose supervisor vanished (no end recorded)
             is counted up to its last heartbeat: a lower bound.

Goodput = useful training time / wall time, where
  wall time    = from the first attempt's launch to the last attempt's end
                 (its last record update if none was recorded), including
                 backoff and the time no supervisor ran (exact);
  useful time  = (newest committed step - the step the first attempt started
                 from) x pace: the time an uninterrupted run would have needed
                 for the steps the run kept (estimated through the pace).
The rest of the wall time is idle, startup, re-done work and final saves,
and what the estimates leave unexplained ("other"). A finished run's steps
after its last checkpoint are not counted as useful (under one save interval).
"""

from __future__ import annotations

import itertools
import signal
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ftharness.events import AttemptRecord, CommitSeen
from ftharness.exitcodes import exit_code_for_signal
from ftharness.policy import Outcome


@dataclass(frozen=True)
class AttemptStory:
    number: int  # 1, 2, ... in launch order over every supervisor session
    record: AttemptRecord
    outcome: str  # finished, preempted, peer_stopped, peer_lost, crashed, fatal, unknown
    detail: str
    start_step: int | None  # exact: restored from (None: a fresh start)
    end_step: int | None  # exact: newest committed step when it ended
    last_seen_at: float  # its end, or its last record update when no end was recorded
    gap_before: float | None  # exact: idle since the previous attempt's end
    gap_kind: str | None  # "backoff" (same supervisor) or "no supervisor"
    startup_seconds: float | None  # estimated
    lost_seconds: float | None  # estimated (0 exactly for finished / clean preemption)
    lost_steps: int | None  # estimated
    final_save_seconds: float | None  # measured: stop request -> exit, clean preemptions

    @property
    def duration(self) -> float:
        return self.last_seen_at - self.record.launched_at

    @property
    def interrupted(self) -> bool:
        return self.outcome not in ("finished", "fatal")


@dataclass(frozen=True)
class RunStory:
    attempts: tuple[AttemptStory, ...]
    first_step: int  # exact: the step the first attempt started from
    last_step: int | None  # exact: the newest step committed
    wall_seconds: float  # exact
    idle_seconds: float  # exact: backoff and no supervisor
    final_save_seconds: float  # measured
    pace: float | None  # estimated: seconds per step
    startup_seconds: float | None  # estimated
    redone_seconds: float | None  # estimated
    useful_seconds: float | None  # estimated

    @property
    def goodput(self) -> float | None:
        if self.useful_seconds is None or self.wall_seconds <= 0:
            return None
        return self.useful_seconds / self.wall_seconds

    @property
    def other_seconds(self) -> float | None:
        """Wall time the accounting leaves unexplained: the estimates' error."""
        useful, startup, redone = self.useful_seconds, self.startup_seconds, self.redone_seconds
        if useful is None or startup is None or redone is None:
            return None
        accounted = self.idle_seconds + self.final_save_seconds + useful + startup + redone
        return self.wall_seconds - accounted

    @property
    def state(self) -> str:
        return self.attempts[-1].outcome if self.attempts else "empty"

    @property
    def checkpoints_committed(self) -> int:
        return sum(len(a.record.checkpoints) for a in self.attempts)

    @property
    def sessions(self) -> list[str]:
        return list(dict.fromkeys(a.record.session for a in self.attempts))

    @property
    def run_ids(self) -> list[str]:
        return list(dict.fromkeys(a.record.run_id for a in self.attempts))


# What a record may say; beyond it, the record is not one ftharness wrote.
_MAX_TIME = 1e11  # Unix seconds: the year 5138 (time.localtime() copes)
_MAX_COUNT = 2**62


def implausible(record: AttemptRecord) -> str | None:
    """Why `record` cannot be told (a wrong type, a number out of range), or None.

    Records are read back from storage: untrusted. `AttemptRecord.from_json`
    checks their shape; this checks every value `tell()` computes with, so
    that a crafted record is skipped with one line instead of ending `status`
    in an OverflowError.
    """
    checks: list[tuple[str, object, str]] = [
        ("attempt", record.attempt, "count"),
        ("supervisor_pid", record.supervisor_pid, "count"),
        ("worker_pid", record.worker_pid, "count"),
        ("launched_at", record.launched_at, "time"),
        ("updated_at", record.updated_at, "time"),
        ("start_step", record.start_step, "count?"),
        ("run_id", record.run_id, "text"),
        ("session", record.session, "text"),
        ("host", record.host, "text"),
    ]
    for n, commit in enumerate(record.checkpoints):
        checks += [
            (f"checkpoints[{n}].step", commit.step, "count"),
            (f"checkpoints[{n}].committed_at", commit.committed_at, "time"),
            (f"checkpoints[{n}].seen_at", commit.seen_at, "time"),
            (f"checkpoints[{n}].bytes", commit.bytes, "count"),
        ]
    if record.stop is not None:
        checks.append(("stop.requested_at", record.stop.requested_at, "time"))
        if record.stop.signal not in signal.Signals.__members__:
            return f"stop.signal is not a signal name: {record.stop.signal!r:.40}"
    if record.end is not None:
        end = record.end
        checks += [
            ("end.ended_at", end.ended_at, "time"),
            ("end.outcome", end.outcome, "text"),
            ("end.exit_code", end.exit_code, "count?"),
            ("end.exit_signal", end.exit_signal, "text?"),
            ("end.final_step", end.final_step, "count?"),
            ("end.stop_seconds", end.stop_seconds, "time?"),
        ]
    for name, value, kind in checks:
        if value is None and kind.endswith("?"):
            continue
        kind = kind.rstrip("?")
        if kind == "text":
            if not isinstance(value, str) or len(value) > 1024:
                return f"{name} is not a short string"
        elif kind == "count":
            if type(value) is not int or not -_MAX_COUNT <= value <= _MAX_COUNT:
                return f"{name} is not an integer in range: {value!r:.40}"
        elif type(value) not in (int, float) or not 0 <= value <= _MAX_TIME:  # time
            return f"{name} is not a time in range: {value!r:.40}"
    return None


def tell(records: Sequence[AttemptRecord]) -> RunStory:
    """The story of the attempts in `records` (any order)."""
    records = sorted(records, key=lambda r: (r.launched_at, r.session, r.attempt))
    pace, save_interval = _pace(records)
    startups = [_startup(record, pace) for record in records]
    known = [s for s in startups if s is not None]
    typical_startup = statistics.median(known) if known else None

    attempts: list[AttemptStory] = []
    previous: AttemptRecord | None = None
    for number, (record, startup) in enumerate(zip(records, startups, strict=True), start=1):
        last_seen = record.end.ended_at if record.end else record.updated_at
        if startup is None and typical_startup is not None:
            startup = min(typical_startup, last_seen - record.launched_at)
        outcome, detail = _outcome(record)
        lost_seconds = _lost_seconds(record, outcome, startup)
        lost_steps = None
        if lost_seconds is not None and pace:
            lost_steps = round(lost_seconds / pace)
            if save_interval is not None:
                lost_steps = min(lost_steps, save_interval)
        gap = gap_kind = None
        if previous is not None:
            previous_seen = previous.end.ended_at if previous.end else previous.updated_at
            gap = max(0.0, record.launched_at - previous_seen)
            gap_kind = "backoff" if previous.session == record.session else "no supervisor"
        attempts.append(
            AttemptStory(
                number=number,
                record=record,
                outcome=outcome,
                detail=detail,
                start_step=record.start_step,
                end_step=_end_step(record),
                last_seen_at=last_seen,
                gap_before=gap,
                gap_kind=gap_kind,
                startup_seconds=startup,
                lost_seconds=lost_seconds,
                lost_steps=lost_steps,
                final_save_seconds=_final_save(record, outcome),
            )
        )
        previous = record
    return _totals(tuple(attempts), pace)


def _totals(attempts: tuple[AttemptStory, ...], pace: float | None) -> RunStory:
    if not attempts:
        return RunStory((), 0, None, 0.0, 0.0, 0.0, pace, None, None, None)
    first_step = attempts[0].start_step or 0
    steps = [a.end_step for a in attempts if a.end_step is not None]
    last_step = max(steps) if steps else None
    startups = [a.startup_seconds for a in attempts if a.startup_seconds is not None]
    lost = [a.lost_seconds for a in attempts if a.lost_seconds is not None]
    return RunStory(
        attempts=attempts,
        first_step=first_step,
        last_step=last_step,
        wall_seconds=attempts[-1].last_seen_at - attempts[0].record.launched_at,
        idle_seconds=sum(a.gap_before or 0.0 for a in attempts),
        final_save_seconds=sum(a.final_save_seconds or 0.0 for a in attempts),
        pace=pace,
        # A total is only a total when every attempt has its part.
        startup_seconds=sum(startups) if len(startups) == len(attempts) else None,
        redone_seconds=sum(lost) if len(lost) == len(attempts) else None,
        useful_seconds=(
            (last_step - first_step) * pace if pace is not None and last_step is not None else None
        ),
    )


def _before_stop(record: AttemptRecord) -> list[CommitSeen]:
    if record.stop is None:
        return list(record.checkpoints)
    return [c for c in record.checkpoints if c.committed_at < record.stop.requested_at]


def _pace(records: Sequence[AttemptRecord]) -> tuple[float | None, int | None]:
    """Median seconds per step and steps per save, between consecutive commits."""
    per_step, intervals = [], []
    for record in records:
        commits = _before_stop(record)
        for earlier, later in itertools.pairwise(commits):
            steps = later.step - earlier.step
            if steps > 0 and later.committed_at > earlier.committed_at:
                per_step.append((later.committed_at - earlier.committed_at) / steps)
                intervals.append(steps)
    if not per_step:
        return None, None
    return statistics.median(per_step), round(statistics.median(intervals))


def _startup(record: AttemptRecord, pace: float | None) -> float | None:
    if not record.checkpoints or pace is None:
        return None
    first = record.checkpoints[0]
    since_launch = first.committed_at - record.launched_at
    trained = (first.step - (record.start_step or 0)) * pace
    return min(max(0.0, since_launch - trained), max(0.0, since_launch))


def _outcome(record: AttemptRecord) -> tuple[str, str]:
    end = record.end
    if end is None:
        seen = time.strftime("%H:%M:%S", time.localtime(record.updated_at))
        return "unknown", f"no end recorded: still running, or the machine died (last seen {seen})"
    how = f"killed by {end.exit_signal}" if end.exit_signal else f"exit code {end.exit_code}"
    if end.outcome == Outcome.FINISHED.value:
        return "finished", "exit code 0"
    if end.outcome == Outcome.FATAL.value:
        return "fatal", f"{how}, not retried"
    if end.outcome == Outcome.PEER_STOPPED.value:
        return "peer_stopped", (
            f"another worker of the group was stopped; final checkpoint at step {end.final_step}"
        )
    if end.outcome == Outcome.PEER_LOST.value:
        return "peer_lost", f"the group lost a worker ({how}); relaunched to re-form it"
    if end.outcome == Outcome.STOPPED.value and record.stop is not None:
        if _clean_stop(record):
            seconds = f" in {end.stop_seconds:.1f} s" if end.stop_seconds is not None else ""
            return "preempted", (
                f"{record.stop.signal}; final checkpoint at step {end.final_step}{seconds}"
            )
        return "preempted", f"{record.stop.signal}; no final checkpoint: {how}"
    if end.exit_signal is not None:
        return "crashed", f"{how} (a signal the supervisor did not send: the OOM killer?)"
    return "crashed", how


def _clean_stop(record: AttemptRecord) -> bool:
    """The protocol's clean stop: exit code 128 + signal, after the final checkpoint."""
    end, stop = record.end, record.stop
    if end is None or stop is None or end.exit_signal is not None:
        return False
    return end.exit_code == exit_code_for_signal(signal.Signals[stop.signal])


def _lost_seconds(record: AttemptRecord, outcome: str, startup: float | None) -> float | None:
    if outcome in ("finished", "fatal") or (outcome == "preempted" and _clean_stop(record)):
        return 0.0
    if outcome == "peer_stopped":  # it saved the group's final checkpoint
        return 0.0
    commits = _before_stop(record)
    if commits:
        anchor = commits[-1].committed_at
    elif startup is not None:
        anchor = record.launched_at + startup
    else:
        return None
    if record.stop is not None:
        interrupted = record.stop.requested_at
    elif record.end is not None:
        interrupted = record.end.ended_at
    else:
        interrupted = record.updated_at
    return max(0.0, interrupted - anchor)


def _final_save(record: AttemptRecord, outcome: str) -> float | None:
    # Counted whether or not the final checkpoint made it: the time was spent.
    if outcome == "preempted" and record.end is not None and record.end.stop_seconds is not None:
        return record.end.stop_seconds
    return None


def _end_step(record: AttemptRecord) -> int | None:
    if record.end is not None and record.end.final_step is not None:
        return record.end.final_step
    if record.checkpoints:
        return record.checkpoints[-1].step
    return record.start_step
