"""The inspection subcommands' answers and exit codes, through `ftharness.cli.main`."""

from __future__ import annotations

import json
import signal

import pytest

from ftharness.checkpoint.local import LocalCheckpointStore
from ftharness.checkpoint.manifest import WriterInfo
from ftharness.cli import main
from ftharness.events import RunRecorder, commits_since, newest_commit
from ftharness.exitcodes import ExitCode
from ftharness.policy import Outcome
from ftharness.process import ExitStatus


def commit(directory, step: int) -> None:
    LocalCheckpointStore(directory).commit(
        step=step,
        epoch=0,
        batch=step,
        files={"d.bin": [b"x" * 100]},
        writer=WriterInfo("h", 7, "r1"),
    )


@pytest.mark.parametrize("command", ["ls", "verify", "status", "gc"])
def test_a_url_no_filesystem_serves_is_a_usage_error(command, capsys):
    extra = ["--keep", "1"] if command == "gc" else []
    assert main([command, "nosuchprotocol://bucket/run", *extra]) == ExitCode.USAGE_ERROR
    assert capsys.readouterr().err.startswith("ftharness: error: nosuchprotocol://bucket/run:")


def test_an_unreachable_remote_store_is_one_line_and_exit_73(capsys, monkeypatch):
    monkeypatch.setenv(
        "FTHARNESS_STORAGE_OPTIONS",
        '{"endpoint_url": "http://127.0.0.1:9", "key": "k", "secret": "s", '
        '"config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1}}',
    )
    assert main(["ls", "s3://bucket/run"]) == ExitCode.BACKUP_DIR_UNUSABLE
    err = capsys.readouterr().err
    assert err.startswith("ftharness: error: s3://bucket/run is not readable:")
    assert err.count("\n") == 1


def test_an_empty_backup(tmp_path, capsys):
    assert main(["ls", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "no committed checkpoints\n"
    assert main(["verify", str(tmp_path)]) == ExitCode.CHECKPOINT_DAMAGED
    assert "no committed checkpoint to verify" in capsys.readouterr().err
    assert main(["status", str(tmp_path)]) == 0
    assert "no event records" in capsys.readouterr().out
    assert main(["timeline", str(tmp_path), "-o", str(tmp_path / "t.png")]) == 64
    assert "nothing to draw" in capsys.readouterr().err


def test_bad_arguments_are_usage_errors(tmp_path, capsys):
    assert main(["gc", str(tmp_path)]) == ExitCode.USAGE_ERROR  # --keep is required
    assert main(["timeline", str(tmp_path), "-o", "t.png", "--size", "big"]) == 64
    assert "WIDTHxHEIGHT" in capsys.readouterr().err
    assert main(["verify", str(tmp_path), "not-a-checkpoint"]) == ExitCode.USAGE_ERROR


def test_status_of_a_recorded_attempt(tmp_path, capsys):
    store = LocalCheckpointStore(tmp_path)
    recorder = RunRecorder.beside(tmp_path, "r1")
    recorder.attempt_launched(1, 99, newest_commit(store))
    commit(tmp_path, 5)
    commit(tmp_path, 10)
    recorder.checkpoints_committed(commits_since(store, None))
    recorder.stop_requested(signal.SIGTERM)
    recorder.attempt_ended(ExitStatus(code=143), Outcome.STOPPED, 10, 0.25)

    assert main(["status", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "run r1 in" in text and "preempted after 1 attempt (1 supervisor session)" in text
    assert "newest checkpoint: step 10 (epoch 0, batch 10)" in text
    assert "preempted: SIGTERM; final checkpoint at step 10 in 0.2 s" in text

    assert main(["status", str(tmp_path), "--json"]) == 0
    story = json.loads(capsys.readouterr().out)
    assert story["attempts"][0]["record"]["worker_pid"] == 99
    assert story["newest_checkpoint"]["writer"] == {"host": "h", "pid": 7, "run_id": "r1"}

    assert main(["ls", str(tmp_path), "--json"]) == 0
    assert [entry["step"] for entry in json.loads(capsys.readouterr().out)] == [10, 5]


def test_supervise_with_an_impossible_metrics_port_is_a_usage_error(tmp_path, capsys):
    code = main(
        ["supervise", "--backup-dir", str(tmp_path), "--metrics-port", "70000", "--", "true"]
    )
    assert code == ExitCode.USAGE_ERROR
    assert "--metrics-port must be in 0..65535" in capsys.readouterr().err
