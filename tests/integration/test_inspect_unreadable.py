"""Backups the system will not let `ls`, `verify`, `status`, `gc` read or write.

As another user (nobody, through `setpriv`) on a mode-700 backup directory,
and `gc` on a read-only mount (`unshare --mount` and a read-only bind
mount): one line on stderr and exit 73, never a traceback. Also the
inspection commands' other bad inputs: a step that `str.isdigit()` takes for
a number and `int()` does not, and an `ftp://` store nobody listens on.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
from support import BASE_ENV, PYTHON

from ftharness.checkpoint.local import LocalCheckpointStore
from ftharness.checkpoint.manifest import WriterInfo
from ftharness.exitcodes import ExitCode

AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


@pytest.fixture
def backup():
    """A backup with two checkpoints in a directory nobody may enter (mode 700)."""
    parent = Path(tempfile.mkdtemp(prefix="ftharness-unreadable-", dir="/tmp"))
    parent.chmod(0o755)  # the parent is open: only the backup itself is closed
    directory = parent / "backup"
    store = LocalCheckpointStore(directory)
    for step in (10, 20):
        store.commit(
            step=step,
            epoch=0,
            batch=step,
            files={"state.json": [b"{}"]},
            writer=WriterInfo("h", 1, "r"),
        )
    directory.chmod(0o700)
    yield directory
    shutil.rmtree(parent)


def ftharness(*args: str, prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*(prefix or []), PYTHON, "-m", "ftharness", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=BASE_ENV,
        cwd="/",
    )


def assert_one_line(result: subprocess.CompletedProcess, code: int) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ftharness: error: "), result.stderr


def snapshot(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


@needs_root
@pytest.mark.parametrize(
    "command", [["ls"], ["ls", "--verify"], ["verify"], ["status"], ["gc", "--keep", "1"]]
)
def test_another_users_backup_is_one_line_and_exit_73(backup, command):
    before = snapshot(backup)
    result = ftharness(command[0], str(backup), *command[1:], prefix=AS_NOBODY)
    assert_one_line(result, ExitCode.BACKUP_DIR_UNUSABLE)
    assert "Permission denied" in result.stderr
    assert snapshot(backup) == before


@needs_root
def test_gc_on_a_read_only_mount_is_one_line_and_exit_73(backup):
    before = snapshot(backup)
    script = (
        f"mount --bind {backup} {backup} && mount -o remount,bind,ro {backup} {backup} && "
        f"exec {PYTHON} -m ftharness gc {backup} --keep 1"
    )
    result = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env=BASE_ENV,
        cwd="/",
    )
    assert_one_line(result, ExitCode.BACKUP_DIR_UNUSABLE)
    assert "Read-only file system" in result.stderr
    assert snapshot(backup) == before


def test_a_step_that_only_looks_like_a_number_is_a_usage_error(backup):
    result = ftharness("verify", str(backup), "²")
    assert_one_line(result, ExitCode.USAGE_ERROR)
    assert "no committed checkpoint ²" in result.stderr


def test_an_unreachable_ftp_store_is_exit_73_not_a_usage_error():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = ftharness("ls", f"ftp://127.0.0.1:{port}/backup")
    assert_one_line(result, ExitCode.BACKUP_DIR_UNUSABLE)
    assert "ConnectionRefusedError" in result.stderr
