"""The supervisor with real processes and real signals (no TensorFlow)."""

from __future__ import annotations

import itertools
import json
import re
import signal
import time

from support import PYTHON, WORKERS, wait_for

from ftharness.exitcodes import ExitCode


def restart_delays(log: str) -> list[float]:
    return [float(d) for d in re.findall(r"restarting in ([0-9.]+) s", log)]


def test_worker_that_always_fails_is_restarted_with_growing_delays_then_given_up(
    supervise, tmp_path
):
    run = supervise(
        [
            "--backup-dir",
            str(tmp_path / "b"),
            "--max-restarts",
            "3",
            "--backoff-initial",
            "0.1",
            "--",
            PYTHON,
            "-c",
            "import sys; sys.exit(1)",
        ]
    )
    assert run.wait(60) == ExitCode.GAVE_UP
    log = run.log
    assert log.count("launched attempt") == 4
    delays = restart_delays(log)
    assert len(delays) == 3
    # Equal jitter keeps each delay in [base/2, base] with base doubling.
    assert all(later >= earlier for earlier, later in itertools.pairwise(delays))
    assert delays[-1] > delays[0]
    assert "2/3 restarts left" in log and "0/3 restarts left" in log
    assert "gave up" in log


def test_attempts_that_commit_checkpoints_do_not_spend_the_budget(supervise, tmp_path):
    # Four crashing attempts in a row with a budget of one restart: only the
    # checkpoint each attempt commits lets the run reach the fifth.
    run = supervise(
        [
            "--backup-dir",
            str(tmp_path / "b"),
            "--max-restarts",
            "1",
            "--backoff-initial",
            "0.05",
            "--",
            PYTHON,
            str(WORKERS / "progress_worker.py"),
            "5",
        ]
    )
    assert run.wait(60) == ExitCode.FINISHED
    assert run.log.count("backoff reset") == 4
    assert run.log.count("launched attempt") == 5


def test_fatal_exit_code_is_not_retried(supervise, tmp_path):
    run = supervise(
        [
            "--backup-dir",
            str(tmp_path / "b"),
            "--fatal-exit-codes",
            "3",
            "--",
            PYTHON,
            "-c",
            "import sys; sys.exit(3)",
        ]
    )
    assert run.wait(30) == 3
    assert run.log.count("launched attempt") == 1
    assert "is fatal" in run.log


def test_death_by_a_signal_we_did_not_send_is_a_crash(supervise, tmp_path):
    run = supervise(
        [
            "--backup-dir",
            str(tmp_path / "b"),
            "--max-restarts",
            "1",
            "--backoff-initial",
            "0.05",
            "--",
            PYTHON,
            "-c",
            "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
        ]
    )
    assert run.wait(30) == ExitCode.GAVE_UP
    assert "killed by SIGKILL" in run.log
    assert run.log.count("launched attempt") == 2


def test_sigterm_to_a_worker_that_ignores_it_is_escalated_to_sigkill_after_the_grace_budget(
    supervise, tmp_path
):
    ready = tmp_path / "ready"
    stubborn = (
        "import signal, time, pathlib; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"pathlib.Path({str(ready)!r}).touch(); time.sleep(60)"
    )
    run = supervise(
        [
            "--backup-dir",
            str(tmp_path / "b"),
            "--grace-period",
            "1.5",
            "--grace-margin",
            "0.5",
            "--",
            PYTHON,
            "-c",
            stubborn,
        ]
    )
    wait_for(ready.exists, 30, "the worker to start")
    sent = time.monotonic()
    run.process.send_signal(signal.SIGTERM)
    assert run.wait(30) == ExitCode.PREEMPTED
    assert time.monotonic() - sent < 10
    assert "grace budget of 1.0 s spent" in run.log
    assert "killed by SIGKILL" in run.log


def test_sigterm_during_backoff_stops_at_once(supervise, tmp_path):
    run = supervise(
        [
            "--backup-dir",
            str(tmp_path / "b"),
            "--backoff-initial",
            "30",
            "--backoff-max",
            "30",
            "--",
            PYTHON,
            "-c",
            "import sys; sys.exit(1)",
        ]
    )
    wait_for(lambda: "restarting in" in run.log, 30, "the first crash")
    run.process.send_signal(signal.SIGTERM)
    assert run.wait(10) == ExitCode.PREEMPTED
    assert "during backoff" in run.log


def test_second_supervisor_on_the_same_directory_fails_fast_naming_the_holder(supervise, tmp_path):
    backup = tmp_path / "b"
    release = tmp_path / "release"
    waiter = (
        "import pathlib, time\n"
        f"while not pathlib.Path({str(release)!r}).exists(): time.sleep(0.02)\n"
    )
    first = supervise(["--backup-dir", str(backup), "--", PYTHON, "-c", waiter], name="first")
    wait_for(lambda: "launched attempt 1" in first.log, 30, "the first supervisor to launch")

    started = time.monotonic()
    second = supervise(["--backup-dir", str(backup), "--", PYTHON, "-c", "pass"], name="second")
    assert second.wait(30) == ExitCode.BACKUP_DIR_LOCKED
    elapsed = time.monotonic() - started
    assert f"supervisor pid {first.process.pid}" in second.log
    assert "launched" not in second.log
    assert elapsed < 10  # generous for a loaded machine; the lock attempt itself does not wait

    release.touch()
    assert first.wait(30) == ExitCode.FINISHED


def test_orphans_are_reparented_to_the_supervisor_and_reaped(supervise, tmp_path):
    report = tmp_path / "report.json"
    run = supervise(
        [
            "--backup-dir",
            str(tmp_path / "b"),
            "--",
            PYTHON,
            str(WORKERS / "orphan_worker.py"),
            str(report),
        ]
    )
    assert run.wait(60) == ExitCode.FINISHED
    import json

    facts = json.loads(report.read_text())
    assert facts["new_parent"] == run.process.pid  # we are the subreaper
    assert facts["state"] is None  # reaped, not a zombie


def test_the_worker_logs_json_lines_when_the_supervisor_does(supervise, tmp_path):
    # One event stream for a log pipeline: the worker's own ftharness lines
    # follow --log-format too (a Kubernetes Job sets FTHARNESS_LOG_FORMAT=json).
    script = (
        "import logging; from ftharness.worker import WorkerSession; "
        "session = WorkerSession.open(None); "
        "logging.getLogger('ftharness.worker').info('hello from the worker')"
    )
    run = supervise(
        ["--backup-dir", str(tmp_path / "b"), "--log-format", "json", "--", PYTHON, "-c", script]
    )
    assert run.wait(60) == ExitCode.FINISHED
    # Every line is one JSON object, the supervisor's and the worker's.
    events = [json.loads(line) for line in run.log.splitlines() if line.strip()]
    worker_events = [event for event in events if event["logger"] == "ftharness.worker"]
    assert [event["message"] for event in worker_events] == ["hello from the worker"]
