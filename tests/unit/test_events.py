"""RunRecorder: one record file per attempt, replaced whole, readable back."""

from __future__ import annotations

import json
import signal

import pytest

from ftharness.checkpoint.local import LocalCheckpointStore
from ftharness.checkpoint.manifest import WriterInfo
from ftharness.events import (
    EVENTS_DIR,
    AttemptRecord,
    RecordError,
    RunRecorder,
    commits_since,
    newest_commit,
    read_records,
)
from ftharness.policy import Outcome
from ftharness.process import ExitStatus


def commit(store: LocalCheckpointStore, step: int, payload: bytes = b"x" * 10):
    return store.commit(
        step=step,
        epoch=0,
        batch=step,
        files={"data.bin": [payload]},
        writer=WriterInfo("h", 1, "r"),
    )


def files_in(directory) -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in sorted((directory / EVENTS_DIR).iterdir())]


def test_an_attempt_is_recorded_as_it_progresses(tmp_path):
    store = LocalCheckpointStore(tmp_path)
    commit(store, 4)
    recorder = RunRecorder.beside(tmp_path, run_id="r/1")
    recorder.attempt_launched(2, 1234, newest_commit(store))
    [(name, content)] = files_in(tmp_path)
    assert name == f"r_1-{recorder.session}-attempt-0002.json"  # never a path
    launched = AttemptRecord.from_json(content)
    assert (launched.start_step, launched.worker_pid, launched.end) == (4, 1234, None)

    commit(store, 8, b"y" * 20)
    commit(store, 12)
    recorder.checkpoints_committed(commits_since(store, after=4))
    recorder.stop_requested(signal.SIGTERM)
    recorder.attempt_ended(ExitStatus(code=143), Outcome.STOPPED, 12, stop_seconds=0.4567)

    [(_, content)] = files_in(tmp_path)
    record = AttemptRecord.from_json(content)
    assert [(c.step, c.bytes) for c in record.checkpoints] == [(8, 20), (12, 10)]
    manifest = store.read_manifest(store.list_committed()[-1])
    assert record.checkpoints[-1].committed_at == manifest.created
    assert record.stop is not None and record.stop.signal == "SIGTERM"
    assert record.end is not None
    assert (record.end.outcome, record.end.exit_code, record.end.exit_signal) == (
        "stopped",
        143,
        None,
    )
    assert (record.end.final_step, record.end.stop_seconds) == (12, 0.457)
    assert record.updated_at >= record.stop.requested_at
    assert json.loads(content)["format"] == "ftharness-attempt"
    assert not [p for p in (tmp_path / EVENTS_DIR).iterdir() if p.name.startswith(".")]


def test_each_supervisor_session_writes_its_own_files(tmp_path):
    first, second = RunRecorder.beside(tmp_path, "r1"), RunRecorder.beside(tmp_path, "r1")
    first.attempt_launched(1, 10, None)
    second.attempt_launched(1, 20, None)  # the same run id and attempt number
    second.attempt_ended(ExitStatus(signal=signal.SIGKILL), Outcome.CRASHED, None, None)
    records, problems = read_records(files_in(tmp_path))
    assert problems == []
    assert [r.worker_pid for r in records] == [10, 20]
    assert records[1].end is not None and records[1].end.exit_signal == "SIGKILL"


def test_unreadable_records_are_reported_not_fatal(tmp_path):
    RunRecorder.beside(tmp_path, "r1").attempt_launched(1, 10, None)
    files = [*files_in(tmp_path), ("torn.json", b'{"format": "ftharness-att'), ("x.json", b"{}")]
    records, problems = read_records(files)
    assert len(records) == 1
    assert [p.split(":")[0] for p in problems] == ["torn.json", "x.json"]
    with pytest.raises(RecordError):
        AttemptRecord.from_json(b'{"format": "ftharness-attempt", "format_version": 99}')


def test_a_record_that_cannot_be_written_does_not_stop_supervision(tmp_path, caplog):
    (tmp_path / ".ftharness").write_text("a file where the events directory should be")
    recorder = RunRecorder.beside(tmp_path, "r1")
    recorder.attempt_launched(1, 10, None)
    recorder.stop_requested(signal.SIGTERM)
    assert caplog.text.count("cannot write the run's event record") == 1  # once, not per event


def test_heartbeat_does_not_rewrite_a_fresh_record(tmp_path):
    recorder = RunRecorder.beside(tmp_path, "r1")
    recorder.heartbeat()  # nothing launched: nothing to write
    assert not (tmp_path / EVENTS_DIR).exists()
    recorder.attempt_launched(1, 10, None)
    before = files_in(tmp_path)
    recorder.heartbeat()
    assert files_in(tmp_path) == before


def test_commits_since_skips_older_steps_and_reads_sizes(tmp_path):
    store = LocalCheckpointStore(tmp_path)
    assert newest_commit(store) is None
    for step in (1, 2, 3):
        commit(store, step, b"z" * step)
    assert [(c.step, c.bytes) for c in commits_since(store, after=1)] == [(2, 2), (3, 3)]
    assert [c.step for c in commits_since(store, after=None)] == [1, 2, 3]
    assert newest_commit(store).step == 3
