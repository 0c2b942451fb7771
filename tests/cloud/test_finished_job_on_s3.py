"""A finished job's backup is removed from object storage too (moto's S3, issue 15 item 4).

The real supervisor, the real Keras worker with `delete_checkpoint=True`:
once the command exits 0, no checkpoint object is left in the bucket, the
event records and the lease records are, and `ftharness status` still tells
the run's story from them.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from support import BASE_ENV, TOTAL_BATCHES, ftharness_command, keras_worker_command

from ftharness.checkpoint.remote import RemoteCheckpointStore
from ftharness.exitcodes import ExitCode


@pytest.mark.slow
def test_a_job_that_exits_0_leaves_no_checkpoint_in_the_bucket(s3_emulator, supervise, tmp_path):
    url = s3_emulator.url(f"finish-{tmp_path.name}")
    env = {"FTHARNESS_STORAGE_OPTIONS": json.dumps(s3_emulator.storage_options)}
    local = tmp_path / "local"
    run = supervise(
        ["--backup-dir", url, "--local-dir", str(local), "--run-id", "finish", "--",
         *keras_worker_command(tmp_path / "report.json", tmp_path / "batches", sleep=0.02)],
        env=env,
    )  # fmt: skip
    assert run.wait(300) == ExitCode.FINISHED, run.log[-3000:]
    assert "backup removed from" in run.log
    assert "uploaded ckpt-" in run.log  # checkpoints did reach the bucket before

    remote = RemoteCheckpointStore(url, s3_emulator.storage_options)
    objects = remote.fs.find(remote.root)
    assert remote.list_committed() == []
    assert not [path for path in objects if "/ckpt-" in path], objects
    assert [path for path in objects if "/.ftharness/events/" in path]
    assert [path for path in objects if "/.ftharness/lease-" in path]
    assert not list(local.glob("ckpt-*"))

    status = subprocess.run(
        ftharness_command("status", url, "--json"),
        capture_output=True,
        text=True,
        env={**BASE_ENV, **env},
        timeout=120,
    )
    assert status.returncode == 0, status.stderr
    story = json.loads(status.stdout)
    assert story["state"] == "finished"
    assert [attempt["outcome"] for attempt in story["attempts"]] == ["finished"]
    assert story["attempts"][0]["end_step"] == TOTAL_BATCHES
