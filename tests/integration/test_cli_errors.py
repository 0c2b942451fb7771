"""Bad input: one line on stderr, a documented exit code, nothing lost."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from support import BASE_ENV, PYTHON, ftharness_command

from ftharness.exitcodes import ExitCode


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ftharness_command(*args),
        capture_output=True,
        text=True,
        env={**BASE_ENV, **(env or {})},
        timeout=60,
    )


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if "error" in line.lower()]


def test_no_command_after_the_separator(tmp_path):
    result = run_cli("supervise", "--backup-dir", str(tmp_path), "--")
    assert result.returncode == ExitCode.USAGE_ERROR
    assert error_lines(result) == [
        "ftharness: error: no command given after --; usage: ftharness supervise [options] -- CMD"
    ]


def test_missing_backup_dir_is_a_usage_error():
    result = run_cli("supervise", "--", "true")
    assert result.returncode == ExitCode.USAGE_ERROR
    assert "--backup-dir" in result.stderr


def test_unknown_option_is_a_usage_error_in_one_line(tmp_path):
    result = run_cli("supervise", "--backup-dir", str(tmp_path), "--frobnicate", "--", "true")
    assert result.returncode == ExitCode.USAGE_ERROR
    assert result.stderr.strip().count("\n") == 0


def test_invalid_value_from_the_environment_is_a_usage_error(tmp_path):
    result = run_cli(
        "supervise", "--backup-dir", str(tmp_path), "--", "true", env={"FTHARNESS_KEEP": "many"}
    )
    assert result.returncode == ExitCode.USAGE_ERROR


def test_options_come_from_the_environment(tmp_path):
    result = run_cli(
        "supervise",
        "--",
        PYTHON,
        "-c",
        "import os; print(os.environ['FTHARNESS_KEEP'])",
        env={"FTHARNESS_BACKUP_DIR": str(tmp_path), "FTHARNESS_KEEP": "7"},
    )
    assert result.returncode == 0
    assert result.stdout.strip() == "7"


def test_command_not_found_exits_127(tmp_path):
    result = run_cli("supervise", "--backup-dir", str(tmp_path), "--", "no-such-command-ftharness")
    assert result.returncode == ExitCode.COMMAND_NOT_FOUND == 127
    assert "command not found: no-such-command-ftharness" in result.stderr


def test_command_not_executable_exits_126(tmp_path):
    script = tmp_path / "train.sh"
    script.write_text("#!/bin/sh\necho never\n")
    script.chmod(0o644)
    result = run_cli("supervise", "--backup-dir", str(tmp_path / "b"), "--", str(script))
    assert result.returncode == ExitCode.CANNOT_EXECUTE == 126
    assert "cannot execute" in result.stderr
    assert "never" not in result.stdout


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare"
)
@pytest.mark.parametrize("subdir", ["", "new-subdir"])
def test_backup_dir_on_a_read_only_filesystem_exits_73(tmp_path, subdir):
    # A real read-only mount in a private mount namespace: root bypasses
    # permission bits, but not a read-only filesystem.
    mount_point = tmp_path / "ro"
    mount_point.mkdir()
    backup = mount_point / subdir if subdir else mount_point
    script = f"mount -t tmpfs -o ro tmpfs {mount_point} && " + " ".join(
        ftharness_command("supervise", "--backup-dir", str(backup), "--", "true")
    )
    result = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script],
        capture_output=True,
        text=True,
        env=BASE_ENV,
        timeout=60,
    )
    assert result.returncode == ExitCode.BACKUP_DIR_UNUSABLE
    assert "is not usable" in result.stderr
    assert len(error_lines(result)) == 1


def test_backup_dir_below_a_file_exits_73(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = run_cli("supervise", "--backup-dir", str(blocker / "b"), "--", "true")
    assert result.returncode == ExitCode.BACKUP_DIR_UNUSABLE
    assert blocker.read_text() == "not a directory"
