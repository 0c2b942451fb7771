"""Cloud preemption notices end to end: fake metadata servers on 127.0.0.1,
the real supervisor, a real Keras worker."""

from __future__ import annotations

import datetime
import signal
from collections.abc import Iterator

import pytest
from metadata_servers import AwsHandler, AwsState, FakeServer, GceHandler, GceState, serve
from support import PYTHON, WORKERS, batch_log, wait_for, wait_for_batches

from ftharness.checkpoint.local import LocalCheckpointStore
from ftharness.checkpoint.remote import RemoteCheckpointStore
from ftharness.exitcodes import ExitCode

pytestmark = pytest.mark.slow


@pytest.fixture
def gce() -> Iterator[FakeServer]:
    yield from serve(GceHandler, GceState())


@pytest.fixture
def aws() -> Iterator[FakeServer]:
    yield from serve(AwsHandler, AwsState())


def worker(batches, *extra: str) -> list[str]:
    # save_freq far beyond the run: every checkpoint seen here comes from a
    # notice or a stop signal.
    return [
        PYTHON,
        str(WORKERS / "keras_worker.py"),
        "--epochs",
        "3",
        "--samples",
        "128",
        "--batch-size",
        "8",
        "--save-freq",
        "1000",
        "--batch-log",
        str(batches),
        *extra,
    ]


@pytest.mark.parametrize("cloud", ["gce", "aws"])
def test_a_notice_commits_and_uploads_a_checkpoint_before_any_sigterm(
    cloud, request, supervise, tmp_path
):
    server = request.getfixturevalue(cloud)
    batches, local = tmp_path / "batches", tmp_path / "local"
    remote_url = f"file://{tmp_path / 'remote'}"
    run = supervise([
        "--backup-dir", remote_url, "--local-dir", str(local),
        "--preemption-notice", cloud, "--notice-poll-interval", "0.2",
        f"--{cloud}-metadata-url", server.base_url,
        "--", *worker(batches, "--sleep", "0.05"),
    ])  # fmt: skip
    wait_for_batches(batches, 10, 120, "training to start")
    assert LocalCheckpointStore(local).list_committed() == []
    if cloud == "gce":
        server.state.preempted = "TRUE"
    else:
        in_two_minutes = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=2)
        server.state.instance_action = {
            "action": "terminate",
            "time": in_two_minutes.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    wait_for(lambda: LocalCheckpointStore(local).list_committed(), 30, "a checkpoint on notice")
    noticed_at = LocalCheckpointStore(local).latest_step()
    wait_for(lambda: "uploaded ckpt" in run.log, 30, "the upload of that checkpoint")
    assert RemoteCheckpointStore(remote_url).latest().step == noticed_at
    # One line for the notice (not one from the watcher and one from the loop),
    # and it reached the worker as a notice, not as a user's SIGUSR1.
    assert run.log.count(f"preemption notice from {cloud}") == 1, run.log
    assert "SIGUSR1 forwarded" not in run.log
    if cloud == "aws":
        assert "termination expected in" in run.log
    # Training went on after the notice's checkpoint, and nobody sent SIGTERM.
    wait_for_batches(batches, noticed_at + 4, 60, "training to go on")
    assert run.process.poll() is None
    assert "received SIGTERM" not in run.log

    run.process.send_signal(signal.SIGTERM)
    assert run.wait(60) == ExitCode.PREEMPTED
    assert RemoteCheckpointStore(remote_url).latest().step == len(batch_log(batches))


@pytest.mark.parametrize("failure", ["absent", "errors"])
def test_training_is_unaffected_when_the_metadata_server_fails(failure, gce, supervise, tmp_path):
    if failure == "errors":
        gce.state.forced_status = 500
        url = gce.base_url
    else:
        url = "http://127.0.0.1:9"  # discard port: connection refused
    batches = tmp_path / "batches"
    run = supervise([
        "--backup-dir", str(tmp_path / "b"), "--preemption-notice", "gce",
        "--notice-poll-interval", "0.1", "--gce-metadata-url", url,
        "--", *worker(batches, "--sleep", "0.01"),
    ])  # fmt: skip
    assert run.wait(120) == ExitCode.FINISHED
    assert len(batch_log(batches)) == 48
    notice_warnings = [
        line for line in run.log.splitlines() if "WARNING" in line and "gce" in line.lower()
    ]
    assert len(notice_warnings) == 1, notice_warnings  # logged once, not at every poll
