"""The uploader and its lease, on a real file:// store wrapped in a slow or failing one.

Trust item 1: an upload longer than the lease's TTL must neither let the
lease lapse (it is renewed on its own timer) nor, once the lease is lost,
commit a manifest or delete anything.
"""

from __future__ import annotations

import subprocess
import time

import pytest
from faulty_fs import Fault, FaultyFileSystem
from fsspec.implementations.local import LocalFileSystem
from support import commit_checkpoint, ftharness_command, wait_for

from ftharness.checkpoint.lease import LeaseHeldError, RemoteLease
from ftharness.checkpoint.local import LocalCheckpointStore
from ftharness.checkpoint.manifest import MANIFEST_NAME
from ftharness.checkpoint.remote import RemoteCheckpointStore
from ftharness.checkpoint.replicator import Replicator
from ftharness.config import SupervisorConfig
from ftharness.startup import prepare_remote


@pytest.fixture
def remote_url(tmp_path):
    url = f"file://{tmp_path / 'remote'}"
    seed = LocalCheckpointStore(tmp_path / "seed")
    healthy = RemoteCheckpointStore(url)
    for step in (1, 2):  # two intact checkpoints another run left
        commit_checkpoint(seed, step, b"w" * 1000 + bytes([step]))
        healthy.upload(seed, seed.list_committed()[-1])
    return url


def faulty_replicator(tmp_path, url: str, ttl: float, keep: int = 1):
    fs = FaultyFileSystem(LocalFileSystem(auto_mkdir=True))
    remote = RemoteCheckpointStore(url, fs=fs)
    lease = RemoteLease(fs, remote.root, run_id="first", ttl=ttl)
    lease.acquire()
    local = LocalCheckpointStore(tmp_path / "first")
    commit_checkpoint(local, 3, b"w" * 1000 + bytes([3]))
    return fs, Replicator(local, remote, lease, keep=keep)


def test_an_upload_longer_than_the_ttl_keeps_the_lease(tmp_path, remote_url):
    fs, replicator = faulty_replicator(tmp_path, remote_url, ttl=1.2)
    uploads = fs.add(Fault("put_file", match="ckpt-000000000003", delay=1.5))  # 3 s in all
    fs_plain, root = LocalFileSystem(), RemoteCheckpointStore(remote_url).root
    replicator.start()
    replicator.notify()
    try:
        wait_for(lambda: uploads.calls >= 1, 10, "the upload to start")
        time.sleep(1.5)  # past the TTL, mid-upload
        with pytest.raises(LeaseHeldError):
            RemoteLease(fs_plain, root, run_id="contender", ttl=60).acquire()
        assert replicator.flush(deadline=time.monotonic() + 30)
    finally:
        replicator.stop()
    assert not replicator.lease_lost
    remote = RemoteCheckpointStore(remote_url)
    assert [ref.step for ref in remote.list_committed()] == [3]  # keep=1
    assert remote.verify(remote.latest()) == []


def test_a_holder_that_lost_its_lease_commits_and_deletes_nothing(tmp_path, remote_url):
    fs, first = faulty_replicator(tmp_path, remote_url, ttl=1.0)
    # The first run's connection to the lease breaks (its renewals fail) and
    # its upload is slower than the TTL: by its own clock it must stop.
    fs.add(Fault("pipe_file", match="lease-", error=lambda: ConnectionResetError(104, "reset")))
    fs.add(Fault("put_file", match="ckpt-000000000003", delay=1.5))
    first.start()
    first.notify()
    second = prepare_remote(
        SupervisorConfig(
            command=("true",),
            backup_url=remote_url,
            local_dir=tmp_path / "second",
            run_id="second",
            lease_ttl=60,
            lease_wait=30,
        )
    )
    try:
        # The second run took over and fetched the newest intact checkpoint.
        assert second.lease.held
        assert LocalCheckpointStore(tmp_path / "second").latest_step() == 2
        assert not first.flush(deadline=time.monotonic() + 30)
        assert first.lease_lost
    finally:
        first.stop()
        second.keeper.stop()
        second.lease.release()
    remote = RemoteCheckpointStore(remote_url)
    # Nothing committed by the first after the takeover, nothing deleted by it.
    assert [ref.step for ref in remote.list_committed()] == [1, 2]
    assert not LocalFileSystem().exists(remote.path("ckpt-000000000003", MANIFEST_NAME))
    assert all(remote.verify(ref) == [] for ref in remote.list_committed())
    verify = subprocess.run(
        ftharness_command("verify", remote_url), capture_output=True, text=True, timeout=120
    )
    assert verify.returncode == 0, verify.stderr
