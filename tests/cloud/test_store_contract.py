"""One contract, every backend: file://, memory://, s3:// (moto), gs:// (fake-gcs-server),
and the `CheckpointStore` protocol met by the local store and every remote one."""

from __future__ import annotations

import secrets
import time

import fsspec
import pytest

from ftharness.checkpoint.lease import LeaseHeldError, LeaseLostError, RemoteLease
from ftharness.checkpoint.local import LocalCheckpointStore
from ftharness.checkpoint.manifest import WriterInfo
from ftharness.checkpoint.remote import RemoteCheckpointStore, create_only
from ftharness.checkpoint.store import CheckpointStore

WRITER = WriterInfo("host", 1, "run")


@pytest.fixture(params=["file", "memory", "s3", "gs"])
def backend(request, tmp_path):
    """(url, storage_options) of a fresh, empty prefix on each backend."""
    prefix = f"run-{secrets.token_hex(4)}"
    if request.param == "file":
        return f"file://{tmp_path / 'remote' / prefix}", {}
    if request.param == "memory":
        return f"memory://ftharness/{prefix}", {}
    emulator = request.getfixturevalue({"s3": "s3_emulator", "gs": "gcs_emulator"}[request.param])
    return emulator.url(prefix), emulator.storage_options


def commit_local(local: LocalCheckpointStore, step: int, payload: bytes = b"weights"):
    return local.commit(
        step=step,
        epoch=0,
        batch=step,
        writer=WRITER,
        files={"arrays.bin": [payload], "state.json": [b'{"step": %d}' % step]},
    )


def test_upload_list_download_round_trip(backend, tmp_path):
    url, options = backend
    source = LocalCheckpointStore(tmp_path / "source")
    remote = RemoteCheckpointStore(url, options)
    assert remote.list_committed() == []
    payload = secrets.token_bytes(3 * 1024 * 1024 + 7)
    for step in (5, 10):
        remote.upload(source, commit_local(source, step, payload))
    assert [ref.step for ref in remote.list_committed()] == [5, 10]
    assert remote.read_manifest(remote.latest()).files["arrays.bin"].size == len(payload)

    target = LocalCheckpointStore(tmp_path / "target")
    remote.download(remote.latest(), target)
    loaded = target.load_latest()
    assert loaded.manifest.step == 10
    assert loaded.files["arrays.bin"] == bytearray(payload)
    assert loaded.manifest == source.read_manifest(source.list_committed()[-1])


def test_a_torn_upload_is_never_listed_and_is_cleaned_up(backend, tmp_path):
    url, options = backend
    source = LocalCheckpointStore(tmp_path / "source")
    remote = RemoteCheckpointStore(url, options)
    remote.upload(source, commit_local(source, 1))
    # Data files of step 2 without their manifest: an upload cut short.
    remote.fs.makedirs(remote.path("ckpt-000000000002"), exist_ok=True)
    remote.fs.pipe_file(remote.path("ckpt-000000000002", "arrays.bin"), b"half")
    assert [ref.step for ref in remote.list_committed()] == [1]
    assert remote.remove_torn_uploads() == ["ckpt-000000000002"]
    assert not remote.fs.exists(remote.path("ckpt-000000000002", "arrays.bin"))
    assert [ref.step for ref in remote.list_committed()] == [1]


def test_create_only_refuses_to_overwrite(backend):
    url, options = backend
    remote = RemoteCheckpointStore(url, options)
    path = remote.path("probe")
    create_only(remote.fs, path, b"first")
    with pytest.raises(FileExistsError):
        create_only(remote.fs, path, b"second")
    assert remote.fs.cat_file(path) == b"first"


def test_uploading_a_committed_step_again_keeps_the_first(backend, tmp_path):
    url, options = backend
    remote = RemoteCheckpointStore(url, options)
    first = LocalCheckpointStore(tmp_path / "first")
    remote.upload(first, commit_local(first, 3, b"one"))
    manifest = remote.read_manifest(remote.latest())
    second = LocalCheckpointStore(tmp_path / "second")
    remote.upload(second, commit_local(second, 3, b"two"))
    assert remote.read_manifest(remote.latest()) == manifest


def test_retention_keeps_the_newest_and_deletes_manifests_first(backend, tmp_path):
    url, options = backend
    source = LocalCheckpointStore(tmp_path / "source")
    remote = RemoteCheckpointStore(url, options)
    for step in (1, 2, 3, 4):
        remote.upload(source, commit_local(source, step))
    deleted = remote.apply_retention(2)
    assert [ref.step for ref in deleted] == [1, 2]
    assert [ref.step for ref in remote.list_committed()] == [3, 4]
    assert not remote.fs.exists(remote.path("ckpt-000000000001", "arrays.bin"))


def test_listing_sees_what_another_client_committed(backend, tmp_path):
    url, options = backend
    remote = RemoteCheckpointStore(url, options)
    assert remote.list_committed() == []  # fills fsspec's listing cache, if any
    other_process = RemoteCheckpointStore(url, {**options, "skip_instance_cache": True})
    source = LocalCheckpointStore(tmp_path / "source")
    other_process.upload(source, commit_local(source, 7))
    assert [ref.step for ref in remote.list_committed()] == [7]


def test_lease_excludes_a_second_run_until_released(backend):
    url, options = backend
    fs, root = fsspec.core.url_to_fs(url, **options)
    first = RemoteLease(fs, root, run_id="first", ttl=60)
    second = RemoteLease(fs, root, run_id="second", ttl=60)
    first.acquire()
    with pytest.raises(LeaseHeldError, match="run first"):
        second.acquire()
    first.renew()
    first.release()
    second.acquire()
    assert second.held


def test_an_expired_lease_is_taken_over_and_its_holder_learns_it(backend):
    url, options = backend
    fs, root = fsspec.core.url_to_fs(url, **options)
    crashed = RemoteLease(fs, root, run_id="crashed", ttl=0.5)
    crashed.acquire()
    successor = RemoteLease(fs, root, run_id="successor", ttl=60)
    with pytest.raises(LeaseHeldError):
        successor.acquire()
    time.sleep(0.6)
    successor.acquire()
    # The old holder wakes up (a long stall, not a crash) and must stop writing.
    with pytest.raises(LeaseLostError):
        crashed.renew()
    assert successor.current().run_id == "successor"


def test_retention_never_deletes_the_newest_checkpoint_that_verifies(backend, tmp_path):
    url, options = backend
    source = LocalCheckpointStore(tmp_path / "source")
    writer = RemoteCheckpointStore(url, options)
    for step in (1, 2, 3):
        writer.upload(source, commit_local(source, step))
    # The newest one damaged in the bucket (same size, other bytes).
    writer.fs.pipe_file(writer.path("ckpt-000000000003", "arrays.bin"), b"WEIGHTS")
    # The next run applies retention: it trusts nothing it did not upload itself.
    successor = RemoteCheckpointStore(url, {**options, "skip_instance_cache": True})
    assert successor.verify(successor.latest()) == ["arrays.bin fails its checksum"]
    assert [ref.step for ref in successor.apply_retention(1)] == [1]
    assert [ref.step for ref in successor.list_committed()] == [2, 3]
    assert successor.verify(successor.list_committed()[0]) == []


@pytest.fixture(params=["local", "remote"])
def any_store(request, backend, tmp_path):
    """A `CheckpointStore` holding steps 1, 2, 3: the local store, or each remote backend."""
    source = LocalCheckpointStore(tmp_path / "source")
    refs = [commit_local(source, step, b"weights-%d" % step) for step in (1, 2, 3)]
    if request.param == "local":
        return LocalCheckpointStore(tmp_path / "source")  # a fresh object: trusts nothing
    url, options = backend
    remote = RemoteCheckpointStore(url, options)
    for ref in refs:
        remote.upload(source, ref)
    return RemoteCheckpointStore(url, {**options, "skip_instance_cache": True})


def test_every_store_meets_the_checkpoint_store_protocol(any_store: CheckpointStore):
    refs = any_store.list_committed()
    assert [ref.step for ref in refs] == [1, 2, 3]
    assert any_store.read_manifest(refs[-1]).files["arrays.bin"].size == len(b"weights-3")
    assert all(any_store.verify(ref) == [] for ref in refs)
    assert any_store.file_size(refs[-1], "arrays.bin") == len(b"weights-3")
    assert any_store.file_size(refs[-1], "absent.bin") is None
    with any_store.open_file(refs[-1], "arrays.bin") as file:
        assert file.read() == b"weights-3"
    any_store.delete(refs[0])
    assert [ref.step for ref in any_store.list_committed()] == [2, 3]
    assert [ref.step for ref in any_store.apply_retention(1)] == [2]
    assert [ref.step for ref in any_store.list_committed()] == [3]
