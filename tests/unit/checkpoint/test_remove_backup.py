"""LocalCheckpointStore.remove_backup: a finished job's ftharness files, and nothing else."""

from __future__ import annotations

from pathlib import Path

from ftharness.checkpoint.local import DELETE_ON_SUCCESS_MARKER, LocalCheckpointStore
from ftharness.checkpoint.lock import LOCK_FILE_NAME
from ftharness.checkpoint.manifest import WriterInfo


def tree(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*"))


def test_only_ftharness_files_go_and_the_event_records_stay(tmp_path):
    store = LocalCheckpointStore(tmp_path)
    writer = WriterInfo.current("run-1")
    for step in (5, 10):
        store.commit(step=step, epoch=0, batch=step, files={"a": [b"x"]}, writer=writer)
    (tmp_path / ".tmp-ckpt-000000000015-1-abc").mkdir()
    (tmp_path / LOCK_FILE_NAME).write_text("{}")
    own = tmp_path / ".ftharness"
    (own / "events").mkdir(parents=True)
    (own / "events" / "run-1-attempt-0001.json").write_text("{}")
    (own / "lease-000001.json").write_text("{}")
    (tmp_path / DELETE_ON_SUCCESS_MARKER).write_text("{}")
    (tmp_path / "corrupt-ckpt-000000000003-1700000000").mkdir()
    (tmp_path / "model.keras").write_text("the user's")

    removed = store.remove_backup()

    assert tree(tmp_path) == [
        ".ftharness",
        ".ftharness/events",
        ".ftharness/events/run-1-attempt-0001.json",
        "corrupt-ckpt-000000000003-1700000000",
        "model.keras",
    ]
    assert {"ckpt-000000000005", "ckpt-000000000010", LOCK_FILE_NAME} <= set(removed)


def test_a_directory_left_empty_is_removed(tmp_path):
    directory = tmp_path / "b"
    store = LocalCheckpointStore(directory)
    directory.mkdir()
    store.commit(step=1, epoch=0, batch=1, files={"a": [b"x"]}, writer=WriterInfo.current("r"))
    (directory / LOCK_FILE_NAME).write_text("{}")
    store.remove_backup()
    assert not directory.exists()


def test_a_missing_directory_is_nothing_to_remove(tmp_path):
    assert LocalCheckpointStore(tmp_path / "absent").remove_backup() == []
