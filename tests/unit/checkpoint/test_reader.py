"""A non-chief's reader of the backup URL, on a real file:// store wrapped in
one that refuses every write: reading needs none."""

from __future__ import annotations

import logging
import time

import pytest
from faulty_fs import Fault, FaultyFileSystem
from fsspec.implementations.local import LocalFileSystem
from support import commit_checkpoint

from ftharness.checkpoint.local import LocalCheckpointStore
from ftharness.checkpoint.reader import BackupReader
from ftharness.checkpoint.remote import RemoteCheckpointStore

WRITES = ("pipe_file", "put_file", "open", "rm_file", "rm", "makedirs", "mkdir")


def refused() -> BaseException:
    return PermissionError(13, "the test's backup URL refuses every write")


@pytest.fixture
def backup(tmp_path):
    """A backup URL holding steps 5 and 10, uploaded as the chief would."""
    url = f"file://{tmp_path / 'backup'}"
    chief = LocalCheckpointStore(tmp_path / "chief")
    for step in (5, 10):
        RemoteCheckpointStore(url).upload(chief, commit_checkpoint(chief, step))
    return url


class ReadOnly(FaultyFileSystem):
    """A real local filesystem that refuses every write; `open` serves reads too,
    so it refuses only the modes that write, and counts them."""

    def __init__(self) -> None:
        super().__init__(LocalFileSystem(auto_mkdir=True))
        self.faults_on_writes = [
            self.add(Fault(method, error=refused)) for method in WRITES if method != "open"
        ]
        self.opened_for_writing = 0

    def open(self, path, mode="rb", **kwargs):
        if any(flag in mode for flag in "wax+"):
            self.opened_for_writing += 1
            raise refused()
        return super().open(path, mode, **kwargs)

    @property
    def writes(self) -> int:
        return self.opened_for_writing + sum(fault.calls for fault in self.faults_on_writes)


def read_only_reader(tmp_path, url: str) -> BackupReader:
    return BackupReader(
        RemoteCheckpointStore(url, fs=ReadOnly()), LocalCheckpointStore(tmp_path / "l")
    )


def test_fetching_and_waiting_read_the_backup_and_never_write_it(tmp_path, backup):
    reader = read_only_reader(tmp_path, backup)
    reader.fetch()
    assert [ref.step for ref in reader.local.list_committed()] == [10]
    assert reader.wait_for_step(10, until=time.monotonic() + 30) is True
    assert reader.remote.fs.writes == 0


def test_waiting_for_a_step_the_backup_never_gets_ends_at_the_deadline(tmp_path, backup, caplog):
    reader = read_only_reader(tmp_path, backup)
    with caplog.at_level(logging.INFO, logger="ftharness.reader"):
        assert reader.wait_for_step(12, until=time.monotonic() + 0.2) is False
    assert [r.message for r in caplog.records if r.levelno == logging.WARNING] == [
        "stop deadline passed before the backup had step 12 (it has 10); exiting"
    ]


def test_a_backup_that_cannot_be_listed_is_told_and_the_launch_goes_on(tmp_path, backup, caplog):
    fs = FaultyFileSystem(LocalFileSystem(auto_mkdir=True))
    fs.add(Fault("glob", error=lambda: ConnectionResetError(104, "Connection reset by peer")))
    reader = BackupReader(
        RemoteCheckpointStore(backup, fs=fs), LocalCheckpointStore(tmp_path / "l")
    )
    with caplog.at_level(logging.WARNING, logger="ftharness.reader"):
        reader.fetch()  # does not raise
    assert [getattr(r, "event", None) for r in caplog.records] == ["fetch_failed"]
    assert reader.local.list_committed() == []


def test_the_read_only_wrapper_does_refuse_and_count_a_write(tmp_path, backup):
    # So that `writes == 0` above means something.
    fs = ReadOnly()
    remote = RemoteCheckpointStore(backup, fs=fs)
    with pytest.raises(PermissionError):
        fs.pipe_file(remote.path("lease-x"), b"{}")
    with pytest.raises(PermissionError):
        fs.open(remote.path("lease-y"), "wb")
    assert fs.writes == 2
    assert not list((tmp_path / "backup").glob("lease-*"))
