"""Configuration: the backup location, durations, storage options, the worker's environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftharness.config import (
    DEFAULT_KEEP,
    MAX_DURATION,
    BackupLocation,
    RestartPolicyConfig,
    SupervisorConfig,
    WorkerEnvironment,
    parse_duration,
    parse_storage_options,
    worker_environ,
)


def test_backup_locations_are_resolved_once():
    assert BackupLocation.parse("backups") == BackupLocation("backups", True, Path("backups"))
    assert BackupLocation.parse("file:///tmp/b") == BackupLocation(
        "file:///tmp/b", True, Path("/tmp/b")
    )
    remote = BackupLocation.parse("s3://bucket/run")
    assert (remote.is_local, remote.local_path) == (False, None)


@pytest.mark.parametrize("url", ["", "  ", "file://"])
def test_an_empty_location_is_refused(url):
    with pytest.raises(ValueError):
        BackupLocation.parse(url)


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1e400", "-1", str(MAX_DURATION * 2), "x"])
def test_durations_must_be_finite_and_in_range(text):
    with pytest.raises(ValueError, match="--lease-ttl"):
        parse_duration(text, name="--lease-ttl")


def test_durations_in_range_are_accepted():
    assert parse_duration("0", name="d") == 0.0
    assert parse_duration("2.5", name="d") == 2.5
    with pytest.raises(ValueError):
        parse_duration("0", name="d", allow_minimum=False)


def test_configs_refuse_non_finite_durations_built_in_code():
    base = dict(command=("true",), backup_url="b", local_dir=Path("b"), run_id="r")
    for field in ("grace_period", "lease_ttl", "lease_wait"):
        with pytest.raises(ValueError):
            SupervisorConfig(**base, **{field: float("nan")})
    with pytest.raises(ValueError):
        RestartPolicyConfig(backoff_initial=float("inf"), backoff_max=float("inf"))
    assert SupervisorConfig(**base).keep == DEFAULT_KEEP


def test_storage_options_merge_the_environment_and_never_echo_a_bad_item():
    environ = {"FTHARNESS_STORAGE_OPTIONS": '{"anon": false, "endpoint_url": "http://e"}'}
    options = parse_storage_options(["anon=true", "key=plain"], environ)
    assert options == {"anon": True, "endpoint_url": "http://e", "key": "plain"}
    with pytest.raises(ValueError) as caught:
        parse_storage_options(["anon=true", "hunter2-secret"], {})
    assert "hunter2-secret" not in str(caught.value)
    assert "number 2" in str(caught.value)
    with pytest.raises(ValueError):
        parse_storage_options([], {"FTHARNESS_STORAGE_OPTIONS": "[1]"})


def test_the_worker_environment_round_trips_and_sends_only_what_is_read():
    worker = WorkerEnvironment(Path("/c"), run_id="r1", keep=3, lock_fd=7, attempt=2)
    environ = worker.to_environ()
    assert set(environ) == {
        "FTHARNESS_CHECKPOINT_DIR",
        "FTHARNESS_RUN_ID",
        "FTHARNESS_KEEP",
        "FTHARNESS_LOCK_FD",
        "FTHARNESS_ATTEMPT",
    }
    assert WorkerEnvironment.from_environ(environ) == worker
    assert WorkerEnvironment.from_environ(environ).supervised
    assert not WorkerEnvironment.from_environ({}).supervised


def test_the_worker_logs_in_the_supervisors_format_and_refuses_an_unknown_one():
    worker = WorkerEnvironment(Path("/c"), lock_fd=7, log_format="json", log_level="DEBUG")
    environ = worker.to_environ()
    assert (environ["FTHARNESS_LOG_FORMAT"], environ["FTHARNESS_LOG_LEVEL"]) == ("json", "DEBUG")
    assert WorkerEnvironment.from_environ(environ) == worker
    with pytest.raises(ValueError, match="FTHARNESS_LOG_FORMAT='xml'"):
        WorkerEnvironment.from_environ({"FTHARNESS_LOG_FORMAT": "xml"})


def test_the_worker_gets_a_quieter_tensorflow_unless_told_otherwise():
    worker = WorkerEnvironment(Path("/c"), run_id="r1", keep=3, lock_fd=7)
    stale = {"PATH": "/bin", "FTHARNESS_KEEP": "99", "FTHARNESS_ATTEMPT": "9"}
    environ = worker_environ(stale, worker)
    assert environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
    assert (environ["FTHARNESS_KEEP"], environ["FTHARNESS_ATTEMPT"]) == ("3", "1")
    assert environ["PATH"] == "/bin"
    assert worker_environ({"TF_CPP_MIN_LOG_LEVEL": "0"}, worker)["TF_CPP_MIN_LOG_LEVEL"] == "0"


def test_replication_is_needed_only_when_the_backup_is_elsewhere(tmp_path):
    def config(url: str) -> SupervisorConfig:
        return SupervisorConfig(command=("true",), backup_url=url, local_dir=tmp_path, run_id="r")

    assert not config(str(tmp_path)).replicated
    assert not config(f"file://{tmp_path}").replicated
    assert config(str(tmp_path / "other")).replicated
    assert config("s3://bucket/run").replicated
