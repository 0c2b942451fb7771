"""Record sinks: written locally at once, mirrored to the remote store in the background."""

from __future__ import annotations

from faulty_fs import Fault, FaultyFileSystem
from fsspec.implementations.local import LocalFileSystem

from ftharness.checkpoint.layout import EVENTS_DIR
from ftharness.checkpoint.lease import RemoteLease
from ftharness.checkpoint.remote import RemoteCheckpointStore
from ftharness.events import AttemptRecord, RunRecorder
from ftharness.policy import Outcome
from ftharness.process import ExitStatus


def files_in(directory) -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in sorted((directory / EVENTS_DIR).iterdir())]


def test_records_are_mirrored_to_the_remote_store_without_waiting_for_it(tmp_path):
    fs = FaultyFileSystem(LocalFileSystem(auto_mkdir=True))
    slow = fs.add(Fault("pipe_file", delay=1.0))
    remote = RemoteCheckpointStore(f"file://{tmp_path / 'remote'}", fs=fs)
    lease = RemoteLease(LocalFileSystem(), remote.root, run_id="r", ttl=60)
    lease.acquire()
    recorder = RunRecorder.beside(tmp_path / "local", "r", remote=remote, lease=lease)
    recorder.attempt_launched(1, pid=12, start=None)
    # Written locally at once; the slow remote copy follows in the background.
    assert [name for name, _ in files_in(tmp_path / "local")] == [recorder.record.file_name]
    recorder.attempt_ended(ExitStatus(code=0, signal=None), Outcome.FINISHED, 5, None)
    assert recorder.sink.flush(timeout=30)
    copied = tmp_path / "remote" / EVENTS_DIR / recorder.record.file_name
    assert AttemptRecord.from_json(copied.read_bytes()).end.final_step == 5
    assert slow.calls >= 1
    # Once the lease is gone, the records stay local.
    lease.release()
    recorder.heartbeat()
    recorder.attempt_launched(2, pid=13, start=None)
    assert recorder.sink.flush(timeout=30)
    assert not (tmp_path / "remote" / EVENTS_DIR / recorder.record.file_name).exists()
    assert (tmp_path / "local" / EVENTS_DIR / recorder.record.file_name).exists()
