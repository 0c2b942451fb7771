"""Restart policy: classification and the progress-aware budget."""

from __future__ import annotations

import random

from ftharness.config import RestartPolicyConfig
from ftharness.exitcodes import ExitCode
from ftharness.policy import (
    EXIT_RESERVE,
    FINISHED_UPLOAD_BUDGET,
    PEER_LOST_DELAY,
    Exit,
    Outcome,
    Restart,
    RestartBudget,
    RestartDecision,
    StopDeadline,
    classify,
    decide,
)
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


# -- decide: the one place an outcome becomes an exit code ------------------

SIGTERM = 15


def crash_verdict(restart: bool, left: int = 1) -> RestartDecision:
    return RestartDecision(restart, 0.5 if restart else 0.0, left, 3)


def test_a_finished_worker_exits_zero():
    assert decide(Outcome.FINISHED, ExitStatus(code=0), None, None) == Exit(
        ExitCode.FINISHED, "finished", "finished"
    )


def test_a_stop_exits_with_the_signals_code_whatever_the_worker_did():
    for status in (ExitStatus(code=143), ExitStatus(signal=9), ExitStatus(code=0)):
        decision = decide(Outcome.STOPPED, status, SIGTERM, None)
        assert decision == Exit(ExitCode.PREEMPTED, "stopped", "stopped")


def test_a_fatal_code_is_passed_on():
    decision = decide(Outcome.FATAL, ExitStatus(code=65), None, None)
    assert isinstance(decision, Exit)
    assert (decision.code, decision.event) == (65, "fatal")
    assert "65" in decision.reason


def test_a_crash_restarts_while_the_budget_allows():
    assert decide(Outcome.CRASHED, ExitStatus(code=1), None, crash_verdict(True, 2)) == Restart(
        0.5, 2, 3
    )


def test_a_crash_past_the_budget_gives_up():
    decision = decide(Outcome.CRASHED, ExitStatus(signal=9), None, crash_verdict(False, 0))
    assert isinstance(decision, Exit)
    assert (decision.code, decision.event) == (ExitCode.GAVE_UP, "gave_up")
    assert "3 restarts" in decision.reason


def test_the_stop_deadline_is_computed_from_the_grace_period_once():
    deadline = StopDeadline.after_stop_signal(100.0, grace_period=30.0, grace_margin=5.0)
    assert deadline == StopDeadline(kill_at=125.0, upload_by=100.0 + 30.0 - EXIT_RESERVE)
    # The worker is killed before our own upload deadline: the margin is ours.
    assert deadline.kill_at < deadline.upload_by
    unhurried = StopDeadline.unhurried(100.0)
    assert unhurried.kill_at == float("inf")
    assert unhurried.upload_by == 100.0 + FINISHED_UPLOAD_BUDGET


# -- a multi-worker group: a peer's stop or loss is not a crash ---------------

PEER_STOPPED = ExitStatus(code=ExitCode.PEER_STOPPED)
PEER_LOST = ExitStatus(code=ExitCode.PEER_LOST)


def test_peer_exit_codes_are_peer_outcomes_in_a_group_only():
    def outcome(status, **kwargs):
        options = {"stop_requested": False, "fatal_exit_codes": FATAL, "in_group": True}
        return classify(status, **{**options, **kwargs})

    assert outcome(PEER_STOPPED) is Outcome.PEER_STOPPED
    assert outcome(PEER_LOST) is Outcome.PEER_LOST
    # Alone, a worker has no peers: 76 and 79 are crashes like any other code.
    assert outcome(PEER_STOPPED, in_group=False) is Outcome.CRASHED
    assert outcome(PEER_LOST, in_group=False) is Outcome.CRASHED
    # A code the user lists as fatal stays fatal; a stop we asked for stays a stop.
    assert outcome(PEER_LOST, fatal_exit_codes=frozenset({76})) is Outcome.FATAL
    assert (
        classify(PEER_STOPPED, stop_requested=True, fatal_exit_codes=FATAL, in_group=True)
        is Outcome.STOPPED
    )
    assert outcome(ExitStatus(signal=9)) is Outcome.CRASHED  # a SIGKILL is a crash


def test_a_stopped_peer_relaunches_at_once_and_no_budget_counts_it():
    assert decide(Outcome.PEER_STOPPED, PEER_STOPPED, None, None) == Restart(
        0.0, None, None, "peer_stopped"
    )


def test_peer_losses_have_their_own_budget_and_leave_the_crash_budget_alone():
    budget = RestartBudget(RestartPolicyConfig(max_restarts=2, backoff_initial=0))
    first, second = (budget.after_peer_lost(made_progress=False) for _ in range(2))
    assert (first.restart, first.restarts_left, first.delay) == (True, 1, PEER_LOST_DELAY)
    assert (second.restart, second.restarts_left) == (True, 0)
    # Two losses later, the crash budget is whole.
    assert budget.after_crash(made_progress=False).restarts_left == 1
    assert budget.after_peer_lost(made_progress=False).restart is False


def test_progress_renews_the_peer_loss_budget():
    budget = RestartBudget(RestartPolicyConfig(max_restarts=1, backoff_initial=0))
    assert budget.after_peer_lost(made_progress=False).restarts_left == 0
    assert budget.after_peer_lost(made_progress=True).restarts_left == 0
    budget.after_progress()  # e.g. a PEER_STOPPED attempt that committed
    assert budget.after_peer_lost(made_progress=False).restart is True
    assert budget.after_peer_lost(made_progress=False).restart is False


def test_a_lost_peer_restarts_after_the_short_delay_or_gives_up_with_its_budget():
    verdict = RestartDecision(True, PEER_LOST_DELAY, 2, 3)
    assert decide(Outcome.PEER_LOST, PEER_LOST, None, verdict) == Restart(
        PEER_LOST_DELAY, 2, 3, "peer_lost"
    )
    spent = decide(Outcome.PEER_LOST, PEER_LOST, None, RestartDecision(False, 0.0, 0, 3))
    assert isinstance(spent, Exit)
    assert (spent.code, spent.event) == (ExitCode.GAVE_UP, "gave_up")
    assert "4 times in a row without a new checkpoint" in spent.reason
