"""Errors of the remote tier: clear, one line, the right exit code, no secrets."""

from __future__ import annotations

import io
import json
import os
import select
import time

import pytest
from support import PYTHON

from ftharness.checkpoint.remote import retry_until
from ftharness.exitcodes import ExitCode
from ftharness.progress import TransferProgress

SECRET = "s3cr3t-DO-NOT-LOG-9f8e7d"


def test_unusable_bucket_exits_73_without_leaking_credentials(s3_emulator, supervise, tmp_path):
    options = {**s3_emulator.storage_options, "secret": SECRET}
    run = supervise(
        [
            "--backup-dir",
            "s3://no-such-bucket/run",
            "--local-dir",
            str(tmp_path / "l"),
            "--",
            PYTHON,
            "-c",
            "pass",
        ],
        env={"FTHARNESS_STORAGE_OPTIONS": json.dumps(options)},
    )
    assert run.wait(60) == ExitCode.BACKUP_DIR_UNUSABLE
    assert SECRET not in run.log
    errors = [line for line in run.log.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "s3://no-such-bucket/run" in errors[0]
    assert "launched" not in run.log


def test_unreachable_endpoint_exits_73(supervise, tmp_path):
    options = {
        "endpoint_url": "http://127.0.0.1:9",
        "key": "k",
        "secret": SECRET,
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1},
    }
    run = supervise(
        [
            "--backup-dir",
            "s3://bucket/run",
            "--local-dir",
            str(tmp_path / "l"),
            "--",
            PYTHON,
            "-c",
            "pass",
        ],
        env={"FTHARNESS_STORAGE_OPTIONS": json.dumps(options)},
    )
    assert run.wait(120) == ExitCode.BACKUP_DIR_UNUSABLE
    assert SECRET not in run.log


def test_malformed_storage_options_are_a_usage_error(supervise, tmp_path):
    run = supervise(
        ["--backup-dir", "s3://bucket/run", "--", PYTHON, "-c", "pass"],
        env={"FTHARNESS_STORAGE_OPTIONS": "{not json"},
    )
    assert run.wait(30) == ExitCode.USAGE_ERROR
    assert "FTHARNESS_STORAGE_OPTIONS must be a JSON object" in run.log


def test_transient_errors_are_retried_until_success():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("connection reset by peer")
        return "done"

    assert retry_until(None, "flaky", flaky) == "done"
    assert len(calls) == 3


def test_retries_stop_at_the_deadline_and_never_retry_programming_errors():
    calls = []

    def always_down():
        calls.append(1)
        raise TimeoutError("timed out")

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        retry_until(time.monotonic() + 0.5, "down", always_down)
    assert time.monotonic() - started < 5
    assert 1 <= len(calls) < 8

    bugs = []

    def buggy():
        bugs.append(1)
        raise AttributeError("a bug, not an outage")

    with pytest.raises(AttributeError):
        retry_until(None, "buggy", buggy)
    assert len(bugs) == 1


def test_transfer_progress_draws_on_a_terminal_and_clears_at_the_end():
    leader, follower = os.openpty()  # a real terminal
    with open(follower, "w") as terminal:
        progress = TransferProgress("upload ckpt-000000000001", stream=terminal)
        progress.set_size(4_000_000)
        for _ in range(4):
            progress.relative_update(1_000_000)
        terminal.flush()
        drawn = b""
        while select.select([leader], [], [], 0.5)[0]:
            drawn += os.read(leader, 4096)
    os.close(leader)
    text = drawn.decode()
    assert text.startswith("\rupload ckpt-000000000001:  25% of 3.8 MiB")
    assert text.endswith("\r\x1b[K")


def test_transfer_progress_is_silent_in_logs():
    log = io.StringIO()
    progress = TransferProgress("upload", stream=log)
    progress.set_size(10)
    progress.relative_update(10)
    assert log.getvalue() == ""
