"""RemoteCheckpointStore.remove_backup, on a real file:// store (issue 15 item 4).

A finished job's remote backup goes: every committed checkpoint and torn
upload. The event records and the lease records stay, and a writer that lost
its lease (`before_delete` raising) deletes nothing more.
"""

from __future__ import annotations

import time

import pytest
from support import commit_checkpoint

from ftharness.checkpoint.layout import EVENTS_DIR
from ftharness.checkpoint.lease import LeaseKeeper, LeaseLostError, RemoteLease
from ftharness.checkpoint.local import LocalCheckpointStore
from ftharness.checkpoint.remote import RemoteCheckpointStore
from ftharness.checkpoint.replicator import Replicator

RECORD = "run-session-attempt-0001.json"


@pytest.fixture
def backup(tmp_path):
    """A remote backup with three checkpoints, a torn upload, a record and a lease."""
    root = tmp_path / "remote"
    remote = RemoteCheckpointStore(f"file://{root}")
    local = LocalCheckpointStore(tmp_path / "local")
    for step in (1, 2, 3):
        commit_checkpoint(local, step, b"w" * 100 + bytes([step]))
        remote.upload(local, local.list_committed()[-1])
    torn = root / "ckpt-000000000004"
    torn.mkdir()
    (torn / "arrays.bin").write_bytes(b"half")
    (root / EVENTS_DIR).mkdir(parents=True)
    (root / EVENTS_DIR / RECORD).write_text("{}")
    return root, remote, local


def names(root) -> set[str]:
    return {path.name for path in root.iterdir()}


def test_it_removes_every_checkpoint_and_torn_upload_and_keeps_the_records(backup):
    root, remote, _ = backup
    RemoteLease(remote.fs, remote.root, run_id="run", ttl=30).acquire()
    removed = remote.remove_backup()
    assert sorted(removed) == [f"ckpt-00000000000{step}" for step in (1, 2, 3, 4)]
    assert remote.list_committed() == []
    assert names(root) == {".ftharness"}
    assert (root / EVENTS_DIR / RECORD).read_text() == "{}"
    assert list((root / ".ftharness").glob("lease-*.json"))  # the lease stays


def test_a_lost_lease_before_the_first_deletion_deletes_nothing(backup):
    root, remote, _ = backup
    before = names(root)

    def lost() -> None:
        raise LeaseLostError("taken over")

    with pytest.raises(LeaseLostError):
        remote.remove_backup(before_delete=lost)
    assert names(root) == before
    assert [ref.step for ref in remote.list_committed()] == [1, 2, 3]
    assert remote.verify(remote.latest()) == []


def test_the_lease_is_checked_before_each_deletion_and_its_loss_stops_them(backup):
    _, remote, _ = backup
    checks = []

    def lost_after_one() -> None:
        checks.append(len(remote.list_committed()))
        if len(checks) > 1:
            raise LeaseLostError("taken over")

    with pytest.raises(LeaseLostError):
        remote.remove_backup(before_delete=lost_after_one)
    assert checks == [3, 2]  # checked before the first and the second deletion
    assert [ref.step for ref in remote.list_committed()] == [2, 3]
    assert all(remote.verify(ref) == [] for ref in remote.list_committed())


def test_a_replicator_whose_lease_was_taken_over_removes_nothing(backup):
    root, remote, local = backup
    lease = RemoteLease(remote.fs, remote.root, run_id="first", ttl=1.0)
    lease.acquire()
    replicator = Replicator(local, remote, lease, keep=2, keeper=LeaseKeeper(lease))
    time.sleep(1.5)  # never renewed (the keeper is not started): it expires
    RemoteLease(remote.fs, remote.root, run_id="second", ttl=30).acquire()
    before = names(root)
    with pytest.raises(LeaseLostError):
        replicator.remove_backup()
    assert names(root) == before
    assert [ref.step for ref in remote.list_committed()] == [1, 2, 3]


def test_a_replicator_holding_its_lease_removes_the_backup(backup):
    root, remote, local = backup
    lease = RemoteLease(remote.fs, remote.root, run_id="first", ttl=30)
    lease.acquire()
    replicator = Replicator(local, remote, lease, keep=2)
    replicator.start()
    try:
        assert len(replicator.remove_backup()) == 4
    finally:
        replicator.stop()
    assert names(root) == {".ftharness"}
    assert replicator.uploaded_step is None
