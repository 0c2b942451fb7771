"""The start-up fetch: what a damaged local checkpoint or a flaky store must not do.

Trust item 3: a damaged local newest checkpoint must not hide an intact remote
copy. Trust item 4: a transient error while reading a remote manifest is
retried, not taken for corruption; one that persists is an I/O error that
moves nothing.
"""

from __future__ import annotations

import pytest
from faulty_fs import Fault, FaultyFileSystem, connection_reset
from fsspec.implementations.local import LocalFileSystem
from support import commit_checkpoint

from ftharness.checkpoint.local import LocalCheckpointStore
from ftharness.checkpoint.remote import RemoteCheckpointStore
from ftharness.checkpoint.retry import CheckpointIOError
from ftharness.startup import fetch_newest


def flip_a_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def remote(tmp_path):
    """A file:// store holding steps 3 and 5, through a wrapper that injects nothing yet."""
    source = LocalCheckpointStore(tmp_path / "source")
    fs = FaultyFileSystem(LocalFileSystem(auto_mkdir=True))
    store = RemoteCheckpointStore(f"file://{tmp_path / 'remote'}", fs=fs)
    for step in (3, 5):
        store.upload(source, commit_checkpoint(source, step))
    return store


def test_a_damaged_local_newest_does_not_hide_the_intact_remote_copy(tmp_path, remote):
    local = LocalCheckpointStore(tmp_path / "local")
    damaged = commit_checkpoint(local, 5)
    flip_a_byte(damaged.path / "arrays.bin")
    fetch_newest(remote, local)
    loaded = local.load_latest()
    assert loaded is not None and loaded.manifest.step == 5
    assert loaded.files["arrays.bin"] == bytearray(b"weights-5")
    # The damaged copy was moved aside, not deleted.
    assert any(p.name.startswith("corrupt-ckpt-000000000005") for p in local.directory.iterdir())


def test_one_connection_reset_on_the_newest_manifest_is_retried(tmp_path, remote):
    reset = remote.fs.add(
        Fault("cat_file", match="ckpt-000000000005/manifest.json", error=connection_reset, times=1)
    )
    local = LocalCheckpointStore(tmp_path / "local")
    fetch_newest(remote, local)
    assert reset.raised == 1
    assert local.latest_step() == 5  # not a fall-back to step 3


def test_a_store_that_keeps_failing_is_an_io_error_not_a_fall_back(tmp_path, remote):
    remote.fs.add(
        Fault("cat_file", match="ckpt-000000000005/manifest.json", error=connection_reset)
    )
    local = LocalCheckpointStore(tmp_path / "local")
    with pytest.raises(CheckpointIOError):
        fetch_newest(remote, local)
    assert local.list_committed() == []  # step 3 was not taken instead
    assert [ref.step for ref in remote.list_committed()] == [3, 5]
