"""Restart policy: classification and the progress-aware budget."""

from __future__ import annotations

import random

from ftharness.config import RestartPolicyConfig
from ftharness.policy import Outcome, RestartBudget, classify
from ftharness.process import ExitStatus

FATAL = frozenset({64, 65})


def test_classification():
    assert (
        classify(ExitStatus(code=0), stop_requested=False, fatal_exit_codes=FATAL)
        is Outcome.FINISHED
    )
    assert (
        classify(ExitStatus(code=1), stop_requested=False, fatal_exit_codes=FATAL)
        is Outcome.CRASHED
    )
    assert (
        classify(ExitStatus(code=65), stop_requested=False, fatal_exit_codes=FATAL) is Outcome.FATAL
    )
    assert (
        classify(ExitStatus(signal=9), stop_requested=False, fatal_exit_codes=FATAL)
        is Outcome.CRASHED
    )
    # Whatever the worker does after we asked it to stop, it is a stop.
    assert (
        classify(ExitStatus(signal=9), stop_requested=True, fatal_exit_codes=FATAL)
        is Outcome.STOPPED
    )
    assert (
        classify(ExitStatus(code=143), stop_requested=True, fatal_exit_codes=FATAL)
        is Outcome.STOPPED
    )


def test_backoff_grows_within_jitter_and_is_capped():
    budget = RestartBudget(
        RestartPolicyConfig(max_restarts=10, backoff_initial=1, backoff_max=8), rng=random.Random(0)
    )
    delays = [budget.after_crash(made_progress=False).delay for _ in range(6)]
    bases = [1, 2, 4, 8, 8, 8]
    assert all(base / 2 <= delay <= base for delay, base in zip(delays, bases, strict=True))


def test_budget_counts_crashes_without_progress():
    budget = RestartBudget(RestartPolicyConfig(max_restarts=2, backoff_initial=0))
    first, second, third = (budget.after_crash(made_progress=False) for _ in range(3))
    assert (first.restart, first.restarts_left) == (True, 1)
    assert (second.restart, second.restarts_left) == (True, 0)
    assert third.restart is False


def test_progress_resets_the_count_and_the_backoff():
    budget = RestartBudget(
        RestartPolicyConfig(max_restarts=2, backoff_initial=1, backoff_max=100),
        rng=random.Random(0),
    )
    budget.after_crash(made_progress=False)
    budget.after_crash(made_progress=False)
    after_progress = budget.after_crash(made_progress=True)
    assert after_progress.restart and after_progress.restarts_left == 1
    assert after_progress.delay <= 1
