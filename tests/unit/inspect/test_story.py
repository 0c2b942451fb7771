"""The run's story from synthetic records: outcomes, lost work, time accounting, goodput."""

from __future__ import annotations

import pytest

from ftharness.events import AttemptEnd, AttemptRecord, CommitSeen, StopRequest
from ftharness.inspect.story import tell

T0 = 1_700_000_000.0


def commit(step: int, at: float) -> CommitSeen:
    return CommitSeen(step=step, committed_at=T0 + at, seen_at=T0 + at + 0.5, bytes=100)


def record(
    attempt: int,
    launched: float,
    start_step: int | None,
    commits: list[CommitSeen],
    *,
    session: str = "s1",
    ended: float | None = None,
    outcome: str = "crashed",
    exit_code: int | None = 1,
    exit_signal: str | None = None,
    stop: float | None = None,
    stop_seconds: float | None = None,
) -> AttemptRecord:
    final_step = commits[-1].step if commits else start_step
    return AttemptRecord(
        run_id="r1",
        session=session,
        attempt=attempt,
        host="h",
        supervisor_pid=1,
        worker_pid=100 + attempt,
        launched_at=T0 + launched,
        start_step=start_step,
        updated_at=T0 + (ended if ended is not None else launched + 1),
        checkpoints=tuple(commits),
        stop=StopRequest("SIGTERM", T0 + stop) if stop is not None else None,
        end=(
            AttemptEnd(T0 + ended, outcome, exit_code, exit_signal, final_step, stop_seconds)
            if ended is not None
            else None
        ),
    )


# One step per second, saves every 10 steps, 5 s of startup per attempt:
#   attempt 1 (s1): launched 0, trains 0..25 from t=5, commits 10, 20; crashes at t=30
#   attempt 2 (s1): launched 32 (2 s backoff), restores 20, commits 30 at t=47,
#                   SIGTERM at 49, final checkpoint 32 at t=49.5, exits 143 at t=50
#   attempt 3 (s2): launched 60 (10 s without supervisor), restores 32, commits
#                   40 at t=73, 50 at t=83, finishes at t=84
RUN = [
    record(1, 0, None, [commit(10, 15), commit(20, 25)], ended=30),
    record(
        2,
        32,
        20,
        [commit(30, 47), commit(32, 49.5)],
        ended=50,
        outcome="stopped",
        exit_code=143,
        stop=49,
        stop_seconds=1.0,
    ),
    record(
        1,
        60,
        32,
        [commit(40, 73), commit(50, 83)],
        session="s2",
        ended=84,
        outcome="finished",
        exit_code=0,
    ),
]


def test_outcomes_and_exact_facts():
    story = tell(list(reversed(RUN)))  # any order: told in launch order
    assert [a.outcome for a in story.attempts] == ["crashed", "preempted", "finished"]
    assert story.attempts[0].detail == "exit code 1"
    assert story.attempts[1].detail == "SIGTERM; final checkpoint at step 32 in 1.0 s"
    assert [(a.start_step, a.end_step) for a in story.attempts] == [(None, 20), (20, 32), (32, 50)]
    assert [(a.gap_before, a.gap_kind) for a in story.attempts] == [
        (None, None),
        (2.0, "backoff"),
        (10.0, "no supervisor"),
    ]
    assert story.wall_seconds == 84.0
    assert story.idle_seconds == 12.0
    assert story.final_save_seconds == 1.0
    assert (story.first_step, story.last_step) == (0, 50)
    assert story.sessions == ["s1", "s2"]
    assert story.state == "finished"


def test_estimates_pace_startup_lost_work_and_goodput():
    story = tell(RUN)
    assert story.pace == pytest.approx(1.0)
    # First commit 10 steps after the start, 15 s after launch: 5 s of startup.
    assert [a.startup_seconds for a in story.attempts] == pytest.approx([5.0, 5.0, 5.0])
    crashed, preempted, finished = story.attempts
    # Crashed 5 s after its last commit (step 20): about 5 steps re-done.
    assert (crashed.lost_seconds, crashed.lost_steps) == (pytest.approx(5.0), 5)
    assert (preempted.lost_seconds, preempted.lost_steps) == (0.0, 0)
    assert (finished.lost_seconds, finished.lost_steps) == (0.0, 0)
    assert story.useful_seconds == pytest.approx(50.0)
    assert story.goodput == pytest.approx(50.0 / 84.0)
    # 84 = 50 useful + 15 startup + 5 re-done + 1 final save + 12 idle + 1 other (the exit)
    assert story.other_seconds == pytest.approx(1.0)


def test_lost_steps_are_capped_at_one_save_interval():
    late_crash = record(1, 0, None, [commit(10, 15), commit(20, 25)], ended=60)
    story = tell([late_crash])
    assert story.attempts[0].lost_seconds == pytest.approx(35.0)
    assert story.attempts[0].lost_steps == 10  # it would have committed at 30


def test_a_stop_without_final_checkpoint_loses_the_work_since_the_last_commit():
    killed = record(
        1,
        0,
        None,
        [commit(10, 15), commit(20, 25)],
        ended=40,
        outcome="stopped",
        exit_code=None,
        exit_signal="SIGKILL",
        stop=28,
        stop_seconds=12.0,
    )
    attempt = tell([killed]).attempts[0]
    assert attempt.outcome == "preempted"
    assert attempt.detail == "SIGTERM; no final checkpoint: killed by SIGKILL"
    assert (attempt.lost_seconds, attempt.lost_steps) == (pytest.approx(3.0), 3)
    assert attempt.final_save_seconds == 12.0


def test_a_kill_we_did_not_send_is_a_crash():
    oom = record(1, 0, None, [commit(10, 15)], ended=20, exit_code=None, exit_signal="SIGKILL")
    attempt = tell([oom]).attempts[0]
    assert (attempt.outcome, attempt.detail.split(" (")[0]) == ("crashed", "killed by SIGKILL")


def test_a_record_without_end_is_unknown_and_counted_to_its_last_update():
    vanished = record(1, 0, None, [commit(10, 15), commit(20, 25)])  # updated at t=1
    vanished = AttemptRecord(**{**vanished.__dict__, "updated_at": T0 + 31})
    attempt = tell([vanished]).attempts[0]
    assert attempt.outcome == "unknown"
    assert attempt.last_seen_at == T0 + 31
    assert attempt.lost_seconds == pytest.approx(6.0)  # a lower bound


def test_without_two_commits_in_one_attempt_there_is_no_pace_nor_goodput():
    story = tell([record(1, 0, None, [commit(10, 15)], ended=20)])
    assert story.pace is None and story.goodput is None
    assert story.attempts[0].lost_steps is None
    assert story.attempts[0].lost_seconds == pytest.approx(5.0)  # exact seconds still known


def test_no_records_tell_an_empty_story():
    story = tell([])
    assert story.attempts == () and story.state == "empty" and story.goodput is None


def test_a_peers_stop_loses_nothing_and_a_lost_peer_loses_the_work_since_the_last_commit():
    # A multi-worker group: attempt 1 saved the group's final checkpoint (step
    # 20) when another worker was stopped; attempt 2 lost a peer 5 s after
    # its last commit (step 30).
    peer_stopped = record(
        1, 0, None, [commit(10, 15), commit(20, 25)], ended=25.5,
        outcome="peer_stopped", exit_code=79,
    )  # fmt: skip
    peer_lost = record(2, 26, 20, [commit(30, 41)], ended=46, outcome="peer_lost", exit_code=76)
    stopped, lost = tell([peer_stopped, peer_lost]).attempts
    assert (stopped.outcome, lost.outcome) == ("peer_stopped", "peer_lost")
    assert stopped.detail == (
        "another worker of the group was stopped; final checkpoint at step 20"
    )
    assert lost.detail == "the group lost a worker (exit code 76); relaunched to re-form it"
    assert (stopped.lost_seconds, stopped.lost_steps) == (0.0, 0)
    assert (lost.lost_seconds, lost.lost_steps) == (pytest.approx(5.0), 5)
