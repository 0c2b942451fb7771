"""The supervisor's loop, without TensorFlow: real `ftharness supervise`, tiny workers.

Each worker is a one-line shell or Python program, so these run in seconds and
still go through real processes, process groups and signals.
"""

from __future__ import annotations

import json
import signal
import sys

import pytest
from support import PYTHON, Supervised, run_supervisor, wait_for

from ftharness.exitcodes import ExitCode

FAST = ["--backoff-initial", "0", "--backoff-max", "0", "--log-format", "json"]


def events(log: str) -> list[dict]:
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


def named(log: str, event: str) -> list[dict]:
    return [entry for entry in events(log) if entry.get("event") == event]


def test_a_finished_worker_ends_the_run_with_zero(tmp_path):
    run = run_supervisor(tmp_path, ["sh", "-c", "exit 0"], FAST)
    assert run.returncode == ExitCode.FINISHED
    assert len(named(run.log, "launch")) == 1
    assert len(named(run.log, "finished")) == 1


def test_crashes_without_progress_spend_the_budget_then_give_up(tmp_path):
    run = run_supervisor(tmp_path, ["sh", "-c", "exit 3"], [*FAST, "--max-restarts", "2"])
    assert run.returncode == ExitCode.GAVE_UP
    assert [entry["attempt"] for entry in named(run.log, "launch")] == [1, 2, 3]
    assert [entry["restarts_left"] for entry in named(run.log, "restart_scheduled")] == [1, 0]
    assert len(named(run.log, "gave_up")) == 1


def test_a_fatal_exit_code_is_passed_on_and_not_retried(tmp_path):
    run = run_supervisor(tmp_path, ["sh", "-c", "exit 65"], FAST)
    assert run.returncode == 65
    assert len(named(run.log, "launch")) == 1
    assert len(named(run.log, "fatal")) == 1


def test_a_crash_then_a_finish_restarts_once(tmp_path):
    marker = tmp_path / "crashed-once"
    script = f"[ -e {marker} ] && exit 0; touch {marker}; exit 1"
    run = run_supervisor(tmp_path, ["sh", "-c", script], FAST)
    assert run.returncode == ExitCode.FINISHED
    assert [entry["attempt"] for entry in named(run.log, "launch")] == [1, 2]


def test_a_missing_command_exits_127(tmp_path):
    run = run_supervisor(tmp_path, ["no-such-command-ftharness"], FAST)
    assert run.returncode == ExitCode.COMMAND_NOT_FOUND
    assert len(named(run.log, "exec_failed")) == 1


def test_the_worker_sees_only_the_protocol_variables_it_reads(tmp_path):
    dump = tmp_path / "environ.json"
    code = (
        "import json, os, sys; json.dump({k: v for k, v in os.environ.items() "
        "if k.startswith('FTHARNESS_') or k == 'TF_CPP_MIN_LOG_LEVEL'}, open(sys.argv[1], 'w'))"
    )
    run = run_supervisor(
        tmp_path, [PYTHON, "-c", code, str(dump)], FAST, env={"TF_CPP_MIN_LOG_LEVEL": None}
    )
    assert run.returncode == ExitCode.FINISHED, run.log
    environ = json.loads(dump.read_text())
    assert set(environ) == {
        "FTHARNESS_CHECKPOINT_DIR",
        "FTHARNESS_RUN_ID",
        "FTHARNESS_KEEP",
        "FTHARNESS_LOCK_FD",
        "FTHARNESS_ATTEMPT",
        "FTHARNESS_LOG_FORMAT",
        "FTHARNESS_LOG_LEVEL",
        "TF_CPP_MIN_LOG_LEVEL",
    }
    assert environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
    assert environ["FTHARNESS_ATTEMPT"] == "1"


def test_the_users_tensorflow_log_level_is_kept(tmp_path):
    dump = tmp_path / "level"
    code = "import os, sys; open(sys.argv[1], 'w').write(os.environ['TF_CPP_MIN_LOG_LEVEL'])"
    run = run_supervisor(
        tmp_path, [PYTHON, "-c", code, str(dump)], FAST, env={"TF_CPP_MIN_LOG_LEVEL": "0"}
    )
    assert run.returncode == ExitCode.FINISHED, run.log
    assert dump.read_text() == "0"


# A worker that says it is ready, then handles SIGTERM (or ignores it) and SIGUSR1.
WORKER = """
import signal, sys, time, pathlib
ready, mode = pathlib.Path(sys.argv[1]), sys.argv[2]
def stop(signum, frame):
    sys.exit(128 + signum)
def checkpoint(signum, frame):
    pathlib.Path(str(ready) + ".usr1").write_text("asked")
signal.signal(signal.SIGTERM, stop if mode == "obedient" else signal.SIG_IGN)
signal.signal(signal.SIGUSR1, checkpoint)
ready.write_text("ready")
while True:
    time.sleep(0.05)
"""


def start_worker(tmp_path, mode: str, *options: str) -> Supervised:
    ready = tmp_path / "ready"
    run = Supervised(
        ["--backup-dir", str(tmp_path / "b"), *FAST, *options, "--",
         PYTHON, "-c", WORKER, str(ready), mode],
        tmp_path / "supervisor.log",
    )  # fmt: skip
    wait_for(ready.exists, 60, "the worker to start")
    return run


def test_a_stop_signal_is_forwarded_and_becomes_the_exit_code(tmp_path):
    run = start_worker(tmp_path, "obedient")
    run.process.send_signal(signal.SIGTERM)
    assert run.wait(60) == ExitCode.PREEMPTED
    assert len(named(run.log, "stop_requested")) == 1
    [stopped] = named(run.log, "stopped")
    assert stopped["level"] == "info"  # the worker exited 143 itself: a clean stop
    assert named(run.log, "grace_expired") == []


def test_a_worker_that_ignores_the_stop_is_killed_at_the_deadline(tmp_path):
    run = start_worker(tmp_path, "stubborn", "--grace-period", "3", "--grace-margin", "1")
    run.process.send_signal(signal.SIGTERM)
    assert run.wait(60) == ExitCode.PREEMPTED
    assert len(named(run.log, "grace_expired")) == 1
    [stopped] = named(run.log, "stopped")
    assert stopped["level"] == "warning"  # killed, not a final checkpoint


def test_sigusr1_is_forwarded_as_a_checkpoint_request(tmp_path):
    run = start_worker(tmp_path, "obedient")
    try:
        run.process.send_signal(signal.SIGUSR1)
        wait_for(lambda: (tmp_path / "ready.usr1").exists(), 60, "the worker's SIGUSR1")
        assert len(named(run.log, "checkpoint_requested")) == 1
        assert named(run.log, "preemption_notice") == []  # a user's signal is not a notice
    finally:
        run.process.send_signal(signal.SIGTERM)
        assert run.wait(60) == ExitCode.PREEMPTED


@pytest.mark.skipif(sys.platform != "linux", reason="process groups as on Linux")
def test_a_stop_during_backoff_ends_the_run_without_a_new_attempt(tmp_path):
    run = Supervised(
        ["--backup-dir", str(tmp_path / "b"), "--backoff-initial", "60", "--backoff-max", "60",
         "--log-format", "json", "--", "sh", "-c", "exit 1"],
        tmp_path / "supervisor.log",
    )  # fmt: skip
    wait_for(lambda: named(run.log, "restart_scheduled"), 60, "the restart to be scheduled")
    run.process.send_signal(signal.SIGTERM)
    assert run.wait(60) == ExitCode.PREEMPTED
    assert len(named(run.log, "launch")) == 1
    assert "during backoff" in run.log
