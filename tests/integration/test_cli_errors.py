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


@pytest.mark.parametrize(
    "args, env",
    [
        (("--lease-ttl", "nan"), {}),
        (("--lease-ttl", "inf"), {}),
        (("--lease-wait", "nan"), {}),
        (("--grace-period", "inf"), {}),
        (("--grace-margin", "-1"), {}),
        (("--backoff-initial", "inf"), {}),
        (("--backoff-max", "1e400"), {}),
        (("--notice-poll-interval", "0"), {}),
        ((), {"FTHARNESS_LEASE_TTL": "nan"}),
        ((), {"FTHARNESS_LEASE_WAIT": "inf"}),
        ((), {"FTHARNESS_BACKOFF_INITIAL": "nan"}),
        ((), {"FTHARNESS_GRACE_PERIOD": "-inf"}),
        ((), {"FTHARNESS_LOG_LEVEL": "TRACE"}),
        ((), {"FTHARNESS_LOG_FORMAT": "xml"}),
    ],
)
def test_bad_durations_and_choices_are_refused_in_one_line(tmp_path, args, env):
    result = run_cli("supervise", "--backup-dir", str(tmp_path / "b"), *args, "--", "true", env=env)
    assert result.returncode == ExitCode.USAGE_ERROR
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("ftharness: error: ")
    assert not (tmp_path / "b").exists()  # refused before anything was created


def test_an_empty_file_url_is_refused(tmp_path):
    result = subprocess.run(
        ftharness_command("supervise", "--backup-dir", "file://", "--", "true"),
        capture_output=True, text=True, env=BASE_ENV, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == ExitCode.USAGE_ERROR
    assert result.stderr.strip().splitlines() == [
        "ftharness: error: --backup-dir: 'file://' names no directory"
    ]
    assert list(tmp_path.iterdir()) == []  # nothing written into the current directory


def test_a_malformed_storage_option_is_not_echoed(tmp_path):
    result = run_cli(
        "supervise", "--backup-dir", "s3://bucket/x", "--storage-option", "anon=true",
        "--storage-option", "sEcReT-token-value", "--", "true",
    )  # fmt: skip
    assert result.returncode == ExitCode.USAGE_ERROR
    assert "sEcReT-token-value" not in result.stderr
    assert "number 2" in result.stderr


def test_a_password_in_the_backup_url_is_never_shown(tmp_path):
    # Nothing listens on port 1: the store is unusable, and the error names the URL.
    url = "ftp://user:PaSsWoRd42@127.0.0.1:1/backups"
    for log_format in ("text", "json"):
        result = run_cli(
            "supervise", "--backup-dir", url, "--log-format", log_format,
            "--local-dir", str(tmp_path / log_format), "--", "true",
        )  # fmt: skip
        assert result.returncode == ExitCode.BACKUP_DIR_UNUSABLE, result.stderr
        assert "PaSsWoRd42" not in result.stderr + result.stdout
        assert "ftp://user:***@127.0.0.1:1/backups" in result.stderr


GROUP = {"JOB_COMPLETION_INDEX": "1", "FTHARNESS_PEER_HOST_PATTERN": "w-{index}.w"}
GOOD_GROUP = ("--peer-port", "2222", "--worker-count", "2")


@pytest.mark.parametrize(
    "args, env, names",
    [
        ((), {"TF_CONFIG": "{not json"}, "TF_CONFIG"),
        ((), {"TF_CONFIG": '{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps"}}'}, "ps"),
        ((), {"FTHARNESS_PEER_HOST_PATTERN": "w-{index}.w"}, "JOB_COMPLETION_INDEX"),
        (("--worker-count", "2"), GROUP, "--peer-port"),
        (("--peer-port", "2222"), GROUP, "--worker-count"),
        (("--peer-port", "70000", "--worker-count", "2"), GROUP, "peer port"),
        (("--peer-port", "2222", "--worker-count", "0"), GROUP, "worker count"),
        (("--peer-port", "2222", "--worker-count", "1"), GROUP, "out of range"),
        (("--peer-host-pattern", "w-{i}", *GOOD_GROUP), GROUP, "{index}"),
        ((), {**GROUP, "FTHARNESS_PEER_PORT": "http", "FTHARNESS_WORKER_COUNT": "2"}, "http"),
        (("--peer-timeout", "0", *GOOD_GROUP), GROUP, "--peer-timeout"),
        (("--group-timeout", "nan", *GOOD_GROUP), GROUP, "--group-timeout"),
        ((*GOOD_GROUP,), {**GROUP, "FTHARNESS_PEER_TIMEOUT": "-1"}, "--peer-timeout"),
        # Worker 1 is not the chief: with its checkpoints in the backup itself,
        # it would write to the backup URL.
        ((*GOOD_GROUP,), GROUP, "--local-dir of its own"),
    ],
)
def test_a_bad_group_description_is_refused_in_one_line(tmp_path, args, env, names):
    result = run_cli("supervise", "--backup-dir", str(tmp_path / "b"), *args, "--", "true", env=env)
    assert result.returncode == ExitCode.USAGE_ERROR, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("ftharness: error: ")
    assert names in result.stderr
    assert not (tmp_path / "b").exists()  # refused before anything was created
