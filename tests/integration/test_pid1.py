"""The supervisor as PID 1 of a new PID namespace, as in a container."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess

import psutil
import pytest
from support import (
    BASE_ENV,
    PYTHON,
    REPO,
    WORKERS,
    batch_log,
    ftharness_command,
    wait_for,
    wait_for_batches,
)

from ftharness.checkpoint.local import LocalCheckpointStore
from ftharness.exitcodes import ExitCode

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare"
)


def in_new_pid_namespace(command: list[str], log_path, env=None) -> subprocess.Popen:
    log = open(log_path, "ab")  # noqa: SIM115 -- the child writes to it after we return
    return subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", *command],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**BASE_ENV, **(env or {})},
        cwd=REPO,
    )


def pid_one(unshare: subprocess.Popen) -> psutil.Process:
    """The namespace's PID 1, seen from outside: unshare's only child."""
    return wait_for(lambda: psutil.Process(unshare.pid).children(), 30, "PID 1 to start")[0]


def test_orphans_are_reaped_by_pid_one(tmp_path):
    report = tmp_path / "report.json"
    run = in_new_pid_namespace(
        ftharness_command(
            "supervise",
            "--backup-dir",
            str(tmp_path / "b"),
            "--",
            PYTHON,
            str(WORKERS / "orphan_worker.py"),
            str(report),
        ),
        tmp_path / "log",
    )
    assert run.wait(60) == ExitCode.FINISHED, (tmp_path / "log").read_text()
    facts = json.loads(report.read_text())
    assert facts["my_parent"] == 1  # the worker's parent is the supervisor, PID 1
    assert facts["new_parent"] == 1  # the orphan went to PID 1 ...
    assert facts["state"] is None  # ... which reaped it: no zombie left


@pytest.mark.slow
def test_sigterm_to_pid_one_commits_a_final_checkpoint_and_exits_143(tmp_path):
    backup, batches = tmp_path / "b", tmp_path / "batches"
    command = ftharness_command(
        "supervise",
        "--backup-dir",
        str(backup),
        "--",
        PYTHON,
        str(WORKERS / "keras_worker.py"),
        "--epochs",
        "3",
        "--samples",
        "128",
        "--batch-size",
        "8",
        "--save-freq",
        "100",
        "--sleep",
        "0.05",
        "--batch-log",
        str(batches),
    )
    run = in_new_pid_namespace(command, tmp_path / "log")
    supervisor = pid_one(run)
    wait_for_batches(batches, 10, 90, "training to start")
    supervisor.send_signal(signal.SIGTERM)
    assert run.wait(60) == ExitCode.PREEMPTED
    trained = len(batch_log(batches))
    # save_freq=100 never fired: the only checkpoint is the final one.
    assert [ref.step for ref in LocalCheckpointStore(backup).list_committed()] == [trained]
    assert "final checkpoint in" in (tmp_path / "log").read_text()
