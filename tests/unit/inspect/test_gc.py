"""gc: keep the newest N, never the newest, never under a live run's lock."""

from __future__ import annotations

import os
import subprocess

import pytest
from support import ftharness_command

from ftharness.checkpoint.local import LocalCheckpointStore
from ftharness.checkpoint.lock import DirectoryLock, DirectoryLockedError
from ftharness.checkpoint.manifest import WriterInfo
from ftharness.checkpoint.remote import RemoteCheckpointStore
from ftharness.inspect import gc
from ftharness.inspect.backup import open_backup


@pytest.fixture
def backup(tmp_path):
    store = LocalCheckpointStore(tmp_path)
    for step in (1, 2, 3):
        store.commit(
            step=step, epoch=0, batch=step, files={"d": [b"x"]}, writer=WriterInfo("h", 1, "r")
        )
    return open_backup(str(tmp_path))


def steps(backup) -> list[int]:
    return [ref.step for ref in backup.list_committed()]


def test_plan_keeps_the_newest_and_deletes_nothing(backup):
    decided = gc.plan(backup, keep=1)
    assert ([r.step for r in decided.doomed], [r.step for r in decided.kept]) == ([1, 2], [3])
    assert gc.plan(backup, keep=5).doomed == ()
    assert steps(backup) == [1, 2, 3]
    with pytest.raises(ValueError, match="never deleted"):
        gc.plan(backup, keep=0)


def test_collect_deletes_under_the_lock_and_releases_it(backup, tmp_path):
    assert [r.step for r in gc.collect(backup, keep=2).doomed] == [1]
    assert steps(backup) == [2, 3]
    DirectoryLock.acquire(tmp_path, run_id="next", role="supervisor").release()  # released


def test_a_live_holder_is_refused_and_named(backup, tmp_path):
    lock = DirectoryLock.acquire(tmp_path, run_id="live", role="supervisor")
    try:
        assert (
            backup.live_holder()
            == f"supervisor pid {os.getpid()} on host {os.uname()[1]}, run live"
        )
        with pytest.raises(DirectoryLockedError, match=f"supervisor pid {os.getpid()}"):
            gc.collect(backup, keep=1)
        assert steps(backup) == [1, 2, 3]
    finally:
        lock.release()
    # The lock file still names this (living) process, but the kernel says
    # the lock is free: the dry run must agree with what gc will find.
    assert backup.live_holder() is None
    assert [r.step for r in gc.collect(backup, keep=1).doomed] == [1, 2]


def test_no_lock_file_means_no_holder(backup):
    assert backup.live_holder() is None


def test_gc_never_deletes_the_newest_checkpoint_that_verifies(backup, tmp_path):
    # One byte flipped in the newest: a restore falls back to step 2, so gc
    # --keep 1 must keep it (and the damaged one, for inspection).
    data = tmp_path / "ckpt-000000000003" / "d"
    data.write_bytes(b"y")
    decided = gc.plan(backup, keep=1)
    assert [r.step for r in decided.doomed] == [1]
    assert [r.step for r in gc.collect(backup, keep=1).doomed] == [1]
    assert steps(backup) == [2, 3]
    assert LocalCheckpointStore(tmp_path).load_latest().manifest.step == 2


def test_gc_deletes_nothing_when_no_checkpoint_verifies(backup, tmp_path):
    for step in (1, 2, 3):
        (tmp_path / f"ckpt-{step:012d}" / "d").write_bytes(b"y")
    assert gc.collect(backup, keep=1).doomed == ()
    assert steps(backup) == [1, 2, 3]


def test_gc_through_the_cli_keeps_the_fallback_on_a_remote_url(tmp_path):
    source = LocalCheckpointStore(tmp_path / "source")
    remote = RemoteCheckpointStore(f"file://{tmp_path / 'remote'}")
    for step in (1, 2, 3):
        remote.upload(
            source,
            source.commit(
                step=step, epoch=0, batch=step, files={"d": [b"x"]}, writer=WriterInfo("h", 1, "r")
            ),
        )
    (tmp_path / "remote" / "ckpt-000000000003" / "d").write_bytes(b"y")
    result = subprocess.run(
        ftharness_command("gc", remote.url, "--keep", "1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert [ref.step for ref in remote.list_committed()] == [2, 3]
