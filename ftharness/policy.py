"""Restart policy: classify how an attempt ended, decide whether to retry.

A preemption never spends the budget, and neither does a crash after an
attempt that committed a new checkpoint: the budget bounds crash *loops*,
attempts that die again and again without progress.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from ftharness.config import RestartPolicyConfig
from ftharness.process import ExitStatus


class Outcome(str, enum.Enum):
    """How one attempt of the worker ended."""

    FINISHED = "finished"  # exit code 0
    STOPPED = "stopped"  # we asked it to stop (SIGTERM, SIGINT, SIGHUP forwarded)
    FATAL = "fatal"  # an exit code listed as fatal: never retried
    CRASHED = "crashed"  # anything else: non-zero exit, or a signal we did not send


def classify(
    status: ExitStatus, *, stop_requested: bool, fatal_exit_codes: frozenset[int]
) -> Outcome:
    if stop_requested:
        return Outcome.STOPPED
    if status.signal is None and status.code == 0:
        return Outcome.FINISHED
    if status.signal is None and status.code in fatal_exit_codes:
        return Outcome.FATAL
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

    def after_crash(self, *, made_progress: bool) -> RestartDecision:
        if made_progress:
            self._crashes_without_progress = 0
        self._crashes_without_progress += 1
        used = self._crashes_without_progress
        left = self.config.max_restarts - used
        if left < 0:
            return RestartDecision(False, 0.0, 0, self.config.max_restarts)
        return RestartDecision(True, self._backoff(used), left, self.config.max_restarts)

    def _backoff(self, crash_number: int) -> float:
        base = self.config.backoff_initial * self.config.backoff_multiplier ** (crash_number - 1)
        capped = min(self.config.backoff_max, base)
        # "Equal jitter": half fixed, half random. Delays still grow from one
        # crash to the next, and restarts of many jobs do not synchronise.
        return capped / 2 + self._rng.uniform(0, capped / 2)
