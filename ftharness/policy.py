"""Restart policy: classify how an attempt ended, decide whether to retry.

A preemption never spends the budget, and neither does a crash after an
attempt that committed a new checkpoint: the budget bounds crash *loops*,
attempts that die again and again without progress.

In a multi-worker group, a worker also ends because of its peers: PEER_STOPPED
(another worker was stopped and this one saved the group's final checkpoint
with it) is relaunched at once and never counted; PEER_LOST (the group broke
up) is relaunched after a short pause, not counted as a crash, but bounded by
a budget of its own: PEER_LOST exits in a row without a new checkpoint.
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass

from ftharness.config import RestartPolicyConfig
from ftharness.exitcodes import ExitCode, exit_code_for_signal
from ftharness.process import ExitStatus


class Outcome(str, enum.Enum):
    """How one attempt of the worker ended."""

    FINISHED = "finished"  # exit code 0
    STOPPED = "stopped"  # we asked it to stop (SIGTERM, SIGINT, SIGHUP forwarded)
    FATAL = "fatal"  # an exit code listed as fatal: never retried
    # In a group only (alone, these codes are crashes like any other):
    PEER_STOPPED = "peer_stopped"  # exit PEER_STOPPED: a peer was stopped, we saved with it
    PEER_LOST = "peer_lost"  # exit PEER_LOST: a peer was lost, the group must re-form
    CRASHED = "crashed"  # anything else: non-zero exit, or a signal we did not send


# After PEER_LOST: long enough not to spin on a group that cannot form yet,
# short beside the heartbeat timeout the loss took to be noticed.
PEER_LOST_DELAY = 1.0


def classify(
    status: ExitStatus,
    *,
    stop_requested: bool,
    fatal_exit_codes: frozenset[int],
    in_group: bool = False,
) -> Outcome:
    if stop_requested:
        return Outcome.STOPPED
    if status.signal is None and status.code == 0:
        return Outcome.FINISHED
    if status.signal is None and status.code in fatal_exit_codes:
        return Outcome.FATAL
    if in_group and status.signal is None and status.code == ExitCode.PEER_STOPPED:
        return Outcome.PEER_STOPPED
    if in_group and status.signal is None and status.code == ExitCode.PEER_LOST:
        return Outcome.PEER_LOST
    return Outcome.CRASHED


@dataclass(frozen=True)
class RestartDecision:
    restart: bool
    delay: float
    restarts_left: int
    max_restarts: int


class RestartBudget:
    """Counts crashes without progress; grows the backoff between them.

    Example::

        budget = RestartBudget(RestartPolicyConfig(max_restarts=3))
        decision = budget.after_crash(made_progress=False)
        # RestartDecision(restart=True, delay=~1.0, restarts_left=2, ...)
    """

    def __init__(self, config: RestartPolicyConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self._rng = rng or random.Random()
        self._crashes_without_progress = 0
        self._peer_losses_without_progress = 0

    def after_crash(self, *, made_progress: bool) -> RestartDecision:
        if made_progress:
            self._crashes_without_progress = 0
            self._peer_losses_without_progress = 0
        self._crashes_without_progress += 1
        used = self._crashes_without_progress
        left = self.config.max_restarts - used
        if left < 0:
            return RestartDecision(False, 0.0, 0, self.config.max_restarts)
        return RestartDecision(True, self._backoff(used), left, self.config.max_restarts)

    def after_peer_lost(self, *, made_progress: bool) -> RestartDecision:
        """The group broke up: its own count (the same size), a fixed short delay.

        The crash count is left as it is: the peer's own supervisor counts
        the crash that broke the group, if it was one.
        """
        if made_progress:
            self._crashes_without_progress = 0
            self._peer_losses_without_progress = 0
        self._peer_losses_without_progress += 1
        left = self.config.max_restarts - self._peer_losses_without_progress
        if left < 0:
            return RestartDecision(False, 0.0, 0, self.config.max_restarts)
        return RestartDecision(True, PEER_LOST_DELAY, left, self.config.max_restarts)

    def after_progress(self) -> None:
        """An attempt that ended otherwise (PEER_STOPPED) but committed a new checkpoint."""
        self._crashes_without_progress = 0
        self._peer_losses_without_progress = 0

    def _backoff(self, crash_number: int) -> float:
        base = self.config.backoff_initial * self.config.backoff_multiplier ** (crash_number - 1)
        capped = min(self.config.backoff_max, base)
        # "Equal jitter": half fixed, half random. Delays still grow from one
        # crash to the next, and restarts of many jobs do not synchronise.
        return capped / 2 + self._rng.uniform(0, capped / 2)


# -- the one decision: how an attempt's end becomes a restart or an exit ------


@dataclass(frozen=True)
class Restart:
    delay: float
    # Both None for a relaunch no budget counts (PEER_STOPPED).
    restarts_left: int | None
    max_restarts: int | None
    cause: str = "crash"  # crash, peer_stopped, peer_lost: what the log line says


@dataclass(frozen=True)
class Exit:
    code: int
    reason: str
    event: str  # the log event naming the way the run ended


def decide(
    outcome: Outcome,
    status: ExitStatus,
    stop_signal: int | None,
    crash: RestartDecision | None,
) -> Restart | Exit:
    """Pure: the attempt's outcome (and, for a crash or a lost peer, the budget's
    verdict) -> what next.

    This is the one place where a worker's end becomes the supervisor's exit code.
    """
    if outcome is Outcome.STOPPED and stop_signal is not None:
        return Exit(exit_code_for_signal(stop_signal), "stopped", "stopped")
    if outcome is Outcome.FINISHED:
        return Exit(ExitCode.FINISHED, "finished", "finished")
    if outcome is Outcome.FATAL:
        return Exit(
            status.code or 1, f"worker exit code {status.code} is fatal; not restarting", "fatal"
        )
    if outcome is Outcome.PEER_STOPPED:
        # Its final checkpoint is saved; it waits in the group's start for the
        # stopped peer's replacement. No delay, no budget.
        return Restart(0.0, None, None, "peer_stopped")
    if outcome is Outcome.PEER_LOST and crash is not None and crash.restart:
        return Restart(crash.delay, crash.restarts_left, crash.max_restarts, "peer_lost")
    if outcome is Outcome.PEER_LOST:
        max_restarts = crash.max_restarts if crash is not None else 0
        return Exit(
            ExitCode.GAVE_UP,
            f"gave up: the group broke up {max_restarts + 1} times in a row "
            "without a new checkpoint (a peer gone for good?)",
            "gave_up",
        )
    if crash is None or not crash.restart:
        max_restarts = crash.max_restarts if crash is not None else 0
        return Exit(
            ExitCode.GAVE_UP,
            f"gave up: {max_restarts} restarts without a new checkpoint all failed",
            "gave_up",
        )
    return Restart(crash.delay, crash.restarts_left, crash.max_restarts)


# -- the one deadline: the grace period turned into times, once ----------------

# Seconds kept back at the end of the grace period to exit before the SIGKILL.
EXIT_RESERVE = 1.0
# How long a finished (or failed) run may spend making its last upload.
FINISHED_UPLOAD_BUDGET = 600.0


@dataclass(frozen=True)
class StopDeadline:
    """When the worker is killed and when our last upload must be done (monotonic)."""

    kill_at: float
    upload_by: float

    @classmethod
    def after_stop_signal(
        cls, now: float, grace_period: float, grace_margin: float
    ) -> StopDeadline:
        # The platform SIGKILLs us grace_period after its signal: the worker
        # gets all but the margin, the upload all but the exit reserve.
        return cls(now + grace_period - grace_margin, now + grace_period - EXIT_RESERVE)

    @classmethod
    def unhurried(cls, now: float) -> StopDeadline:
        """No platform is waiting (finished, fatal, gave up): a generous upload budget."""
        return cls(math.inf, now + FINISHED_UPLOAD_BUDGET)
