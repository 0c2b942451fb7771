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
    format_seconds,
    parse_duration,
    parse_storage_options,
    worker_environ,
)
from ftharness.group import place_from_index


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


# -- a multi-worker group -------------------------------------------------------


def test_in_a_group_the_worker_gets_tf_config_and_the_timeouts_in_plain_seconds():
    tf_config = '{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}'
    worker = WorkerEnvironment(
        Path("/c"), lock_fd=7, tf_config=tf_config, peer_timeout=10.0, group_timeout=2.5
    )
    environ = worker.to_environ()
    assert environ["TF_CONFIG"] == tf_config
    assert (environ["FTHARNESS_PEER_TIMEOUT"], environ["FTHARNESS_GROUP_TIMEOUT"]) == ("10", "2.5")
    assert WorkerEnvironment.from_environ(environ) == worker
    with pytest.raises(ValueError, match="FTHARNESS_PEER_TIMEOUT"):
        WorkerEnvironment.from_environ({"FTHARNESS_PEER_TIMEOUT": "ten"})


def test_seconds_are_written_as_plain_decimals_to_the_millisecond():
    assert [format_seconds(v) for v in (10.0, 2.5, 900.0, 0.001, 86400.0, 1.23456)] == [
        "10", "2.5", "900", "0.001", "86400", "1.235",
    ]  # fmt: skip


def test_a_stale_timeout_from_an_outer_run_does_not_reach_a_worker_alone():
    stale = {"FTHARNESS_PEER_TIMEOUT": "3", "FTHARNESS_GROUP_TIMEOUT": "4"}
    environ = worker_environ(stale, WorkerEnvironment(Path("/c"), lock_fd=7))
    assert "FTHARNESS_PEER_TIMEOUT" not in environ
    assert "FTHARNESS_GROUP_TIMEOUT" not in environ


def test_a_non_chief_needs_a_local_directory_apart_from_the_backup(tmp_path):
    def config(task_index: int, local_dir: Path) -> SupervisorConfig:
        place = place_from_index(task_index, worker_count=2, host_pattern="w-{index}", port=1)
        return SupervisorConfig(
            command=("true",), backup_url=str(tmp_path), local_dir=local_dir, run_id="r",
            group=place,
        )  # fmt: skip

    assert config(0, tmp_path).is_chief  # the chief may write the backup directly
    assert config(1, tmp_path / "local").is_chief is False
    assert config(1, tmp_path / "local").in_group
    with pytest.raises(ValueError, match="needs a --local-dir of its own"):
        config(1, tmp_path)


def test_group_timeouts_must_be_at_least_a_millisecond():
    base = dict(command=("true",), backup_url="b", local_dir=Path("b"), run_id="r")
    for field in ("peer_timeout", "group_timeout"):
        for value in (0.0, float("nan"), MAX_DURATION * 2):
            with pytest.raises(ValueError, match=field.replace("_", "-")):
                SupervisorConfig(**base, **{field: value})
    assert SupervisorConfig(**base).peer_timeout == 10.0
    assert SupervisorConfig(**base).group_timeout == 900.0
