"""LocalCheckpointStore: commit protocol, verification, retention, cleanup."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ftharness.checkpoint.local import LocalCheckpointStore
from ftharness.checkpoint.manifest import MANIFEST_NAME, Manifest, WriterInfo

WRITER = WriterInfo("host", 1, "run")


def commit(store: LocalCheckpointStore, step: int, payload: bytes = b"payload"):
    return store.commit(
        step=step,
        epoch=step // 10,
        batch=step % 10,
        files={"data.bin": [payload[:3], memoryview(payload[3:])], "state.json": [b"{}"]},
        writer=WRITER,
    )


@pytest.fixture
def store(tmp_path) -> LocalCheckpointStore:
    return LocalCheckpointStore(tmp_path)


def test_commit_then_load_round_trips_every_file(store):
    ref = commit(store, 12)
    assert ref.name == "ckpt-000000000012"
    loaded = store.load(ref)
    assert loaded.files == {"data.bin": bytearray(b"payload"), "state.json": bytearray(b"{}")}
    assert (loaded.manifest.step, loaded.manifest.epoch, loaded.manifest.batch) == (12, 1, 2)
    assert loaded.manifest.files["data.bin"].size == 7
    assert store.verify(ref) == []


def test_commit_leaves_no_temporary_behind(store, tmp_path):
    commit(store, 1)
    assert sorted(os.listdir(tmp_path)) == ["ckpt-000000000001"]


def test_names_sort_by_step_and_latest_is_the_highest(store):
    for step in (5, 100, 20):
        commit(store, step)
    assert [ref.step for ref in store.list_committed()] == [5, 20, 100]
    assert store.latest_step() == 100


def test_a_directory_without_manifest_is_not_a_checkpoint(store, tmp_path):
    (tmp_path / "ckpt-000000000099").mkdir()
    (tmp_path / "ckpt-000000000099" / "data.bin").write_bytes(b"x")
    (tmp_path / ".tmp-ckpt-000000000100-1-abc").mkdir()
    assert store.list_committed() == []
    assert store.load_latest() is None


def test_corrupt_newest_falls_back_to_previous_and_is_moved_aside_not_deleted(
    store, tmp_path, caplog
):
    commit(store, 1, b"first")
    newest = commit(store, 2, b"second")
    (newest.path / "data.bin").write_bytes(b"SECOND")  # same size, other bytes
    loaded = store.load_latest()
    assert loaded.manifest.step == 1
    assert "fails its checksum" in caplog.text
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("corrupt-ckpt-000000000002")]
    assert len(aside) == 1 and (aside[0] / "data.bin").read_bytes() == b"SECOND"


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda ref: (ref.path / "data.bin").unlink(), "data.bin is missing"),
        (
            lambda ref: (ref.path / "data.bin").write_bytes(b"pay"),
            "data.bin has 3 bytes, manifest says 7",
        ),
        (lambda ref: (ref.path / MANIFEST_NAME).write_text("{not json"), "unreadable manifest"),
        (
            lambda ref: (ref.path / MANIFEST_NAME).write_text('{"format": "other"}'),
            "unreadable manifest",
        ),
    ],
)
def test_verify_names_the_damage(store, damage, reason):
    ref = commit(store, 3)
    damage(ref)
    problems = store.verify(ref)
    assert len(problems) == 1 and reason in problems[0]


def test_manifest_of_a_newer_format_is_refused_with_advice(store):
    ref = commit(store, 3)
    text = (
        (ref.path / MANIFEST_NAME).read_text().replace('"format_version": 1', '"format_version": 9')
    )
    (ref.path / MANIFEST_NAME).write_text(text)
    assert "upgrade ftharness" in store.verify(ref)[0]


def test_retention_keeps_the_newest(store):
    for step in range(1, 6):
        commit(store, step)
    deleted = store.apply_retention(2)
    assert [ref.step for ref in deleted] == [1, 2, 3]
    assert [ref.step for ref in store.list_committed()] == [4, 5]
    with pytest.raises(ValueError):
        store.apply_retention(0)


def test_committing_an_existing_step_keeps_the_committed_one(store):
    commit(store, 7, b"original")
    commit(store, 7, b"another!")
    assert store.load_latest().files["data.bin"] == bytearray(b"original")


def test_failed_write_removes_its_temporary_and_keeps_committed_checkpoints(store, tmp_path):
    commit(store, 1)

    def failing_chunks():
        yield b"partial"
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        store.commit(step=2, epoch=0, batch=2, files={"data.bin": failing_chunks()}, writer=WRITER)
    assert sorted(os.listdir(tmp_path)) == ["ckpt-000000000001"]
    assert store.load_latest().manifest.step == 1


def test_stale_temporaries_are_removed(store, tmp_path):
    commit(store, 1)
    (tmp_path / ".tmp-ckpt-000000000002-123-abc").mkdir()
    (tmp_path / ".tmp-ckpt-000000000002-123-abc" / "arrays.bin").write_bytes(b"half")
    assert store.remove_stale_temporaries() == [".tmp-ckpt-000000000002-123-abc"]
    assert sorted(os.listdir(tmp_path)) == ["ckpt-000000000001"]


def test_manifest_round_trip():
    manifest = Manifest(step=1, epoch=2, batch=3, files={}, writer=WRITER)
    assert Manifest.from_json(manifest.to_json(), "x") == manifest


def test_retention_never_deletes_the_newest_checkpoint_that_verifies(tmp_path):
    writer = LocalCheckpointStore(tmp_path)
    for step in (1, 2, 3):
        commit(writer, step)
    (tmp_path / "ckpt-000000000003" / "data.bin").write_bytes(b"PAYLOAD")  # same size
    # Another process (the next attempt) applies retention: it trusts nothing.
    deleted = LocalCheckpointStore(tmp_path).apply_retention(1)
    assert [ref.step for ref in deleted] == [1]
    assert [ref.step for ref in writer.list_committed()] == [2, 3]


_EMFILE_CHILD = """
import resource, sys, threading
from pathlib import Path
from ftharness.checkpoint.local import LocalCheckpointStore
from ftharness.checkpoint.retry import CheckpointIOError
store = LocalCheckpointStore(Path(sys.argv[1]))
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
held = []
try:
    while True:
        held.append(open("/dev/null"))
except OSError:
    pass  # the file table is full: every open now fails with EMFILE
if sys.argv[2] == "transient":  # the table frees up a second later
    threading.Timer(1.0, lambda: [file.close() for file in held]).start()
try:
    loaded = store.load_latest()
except CheckpointIOError as error:
    print("io-error", error.detail)
else:
    print("loaded", loaded.manifest.step if loaded else None)
"""


@pytest.mark.parametrize(
    ("fault", "expected"), [("transient", "loaded 2"), ("always", "Too many open files")]
)
def test_emfile_while_reading_is_retried_then_an_io_error_and_moves_nothing(
    tmp_path, fault, expected
):
    store = LocalCheckpointStore(tmp_path)
    commit(store, 1)
    commit(store, 2)
    child = subprocess.run(
        [sys.executable, "-c", _EMFILE_CHILD, str(tmp_path), fault],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr
    assert expected in child.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000000000001", "ckpt-000000000002"]
    assert store.load_latest().manifest.step == 2
