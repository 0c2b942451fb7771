"""The end of a successful job under `ftharness supervise` (issue 15 item 4).

The real supervisor runs the real Keras worker (tests/workers/keras_worker.py)
with a replicated backup: a local directory and a second one as a file:// URL.
With `delete_checkpoint=True` (train.py's default) the supervisor removes the
backup in both places once the command exits 0, and keeps a user's file and
the event records; with `--keep-backup`, or when the worker crashes after
training, everything stays for the next attempt.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from support import (
    BASE_ENV,
    BATCHES_PER_EPOCH,
    PYTHON,
    REPO,
    TOTAL_BATCHES,
    TRAINING,
    WORKERS,
    batch_log,
)

from ftharness.checkpoint.layout import DELETE_ON_SUCCESS_MARKER, EVENTS_DIR
from ftharness.checkpoint.local import LocalCheckpointStore
from ftharness.checkpoint.lock import LOCK_FILE_NAME
from ftharness.checkpoint.remote import RemoteCheckpointStore
from ftharness.exitcodes import ExitCode

pytestmark = pytest.mark.slow

USER_FILE = "notes.txt"


class Job:
    def __init__(self, tmp_path: Path) -> None:
        self.local = tmp_path / "local"
        self.remote_dir = tmp_path / "remote"
        self.url = f"file://{self.remote_dir}"
        self.report = tmp_path / "report.json"
        self.batches = tmp_path / "batches"
        self.local.mkdir()
        (self.local / USER_FILE).write_text("mine")

    def supervise(self, supervise, *extra: str, env: dict | None = None):
        return supervise(
            ["--backup-dir", self.url, "--local-dir", str(self.local), "--run-id", "finish",
             "--backoff-initial", "0", "--",
             PYTHON, str(WORKERS / "keras_worker.py"), *TRAINING, "--sleep", "0",
             "--report", str(self.report), "--batch-log", str(self.batches), *extra],
            env=env,
        )  # fmt: skip

    def local_checkpoints(self) -> list[str]:
        return [entry.name for entry in self.local.glob("ckpt-*")]

    def remote_checkpoints(self) -> list[str]:
        return [entry.name for entry in self.remote_dir.glob("ckpt-*")]

    def records(self, root: Path) -> list[dict]:
        return [json.loads(path.read_text()) for path in sorted((root / EVENTS_DIR).glob("*.json"))]


def status(url: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "ftharness", "status", url, "--json"],
        capture_output=True,
        text=True,
        env=BASE_ENV,
        cwd=REPO,
        timeout=120,
    )


def assert_removed(job: Job, log: str, attempts: int) -> None:
    assert job.local_checkpoints() == [] and job.remote_checkpoints() == [], log[-3000:]
    assert LocalCheckpointStore(job.local).list_committed() == []
    assert RemoteCheckpointStore(job.url).list_committed() == []
    assert not list(job.local.glob(".tmp-*")) and not list(job.local.glob(".upload-*"))
    assert not (job.local / DELETE_ON_SUCCESS_MARKER).exists()
    assert not (job.local / LOCK_FILE_NAME).exists()
    assert (job.local / USER_FILE).read_text() == "mine"  # a user's file stays
    assert "backup removed from" in log and job.url in log
    # The event records stay in both places, the last one telling the finish.
    for root in (job.local, job.remote_dir):
        records = job.records(root)
        assert len(records) == attempts, root
        assert records[-1]["end"]["outcome"] == "finished"
        assert records[-1]["end"]["final_step"] == TOTAL_BATCHES
    result = status(job.url)
    assert result.returncode == 0, result.stderr
    story = json.loads(result.stdout)
    assert story["state"] == "finished"
    assert len(story["attempts"]) == attempts
    assert story["attempts"][-1]["outcome"] == "finished"


def test_a_job_that_exits_0_leaves_no_backup_locally_or_remotely(supervise, tmp_path):
    job = Job(tmp_path)
    run = job.supervise(supervise)
    assert run.wait(300) == ExitCode.FINISHED, run.log[-3000:]
    assert json.loads(job.report.read_text())["iterations"] == TOTAL_BATCHES
    assert_removed(job, run.log, attempts=1)


def test_keep_backup_keeps_everything(supervise, tmp_path):
    job = Job(tmp_path)
    run = job.supervise(supervise, "--keep-backup")
    assert run.wait(300) == ExitCode.FINISHED, run.log[-3000:]
    assert LocalCheckpointStore(job.local).latest_step() == TOTAL_BATCHES
    remote = RemoteCheckpointStore(job.url)
    assert remote.latest().step == TOTAL_BATCHES  # the final upload was made
    assert remote.verify(remote.latest()) == []
    assert (job.local / USER_FILE).read_text() == "mine"
    assert "backup removed" not in run.log


def test_a_crash_after_fit_resumes_at_the_end_and_the_exit_0_removes_the_backup(
    supervise, tmp_path
):
    job = Job(tmp_path)
    run = job.supervise(supervise, env={"EXIT_AFTER_FIT": "1"})
    assert run.wait(300) == ExitCode.FINISHED, run.log[-3000:]
    epochs = TOTAL_BATCHES // BATCHES_PER_EPOCH
    # The crashed attempt's backup was kept: the relaunch resumed at the very end.
    assert f"resuming at epoch {epochs}, batch 0 (step {TOTAL_BATCHES})" in run.log
    assert batch_log(job.batches) == list(range(1, TOTAL_BATCHES + 1))  # none trained twice
    assert run.log.count("backup removed from") == 1
    assert_removed(job, run.log, attempts=2)
    first = job.records(job.local)[0]
    assert first["end"]["outcome"] == "crashed" and first["end"]["exit_code"] == 1
