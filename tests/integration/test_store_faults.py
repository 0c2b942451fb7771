"""A real `ftharness supervise` against a store that fails (tests/faulty_fs.py).

Trust item 4, end to end: a remote that keeps resetting the connection while
the newest manifest is read is an I/O error (exit 73, nothing fetched, no
fall-back to an older checkpoint); one reset is retried and changes nothing.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from support import BASE_ENV, PYTHON, REPO, ftharness_command

from ftharness.checkpoint.local import LocalCheckpointStore
from ftharness.checkpoint.manifest import WriterInfo
from ftharness.checkpoint.remote import RemoteCheckpointStore
from ftharness.exitcodes import ExitCode


def seeded_remote(tmp_path) -> str:
    source = LocalCheckpointStore(tmp_path / "source")
    remote = RemoteCheckpointStore(f"file://{tmp_path / 'remote'}")
    for step in (3, 5):
        ref = source.commit(
            step=step, epoch=0, batch=step, files={"d": [b"x%d" % step]},
            writer=WriterInfo("h", 1, "r"),
        )  # fmt: skip
        remote.upload(source, ref)
    return str(tmp_path / "remote")


def supervise_faulty(tmp_path, remote_dir: str, times: int | None):
    fault = {"method": "cat_file", "match": "ckpt-000000000005/manifest.json", "error": "reset"}
    if times is not None:
        fault["times"] = times
    env = {
        **BASE_ENV,
        "FAULTY_FS_PLAN": json.dumps({"seed": 1, "faults": [fault]}),
        "PYTHONPATH": os.pathsep.join(
            [str(REPO / "tests" / "faulty_site"), str(REPO), str(REPO / "tests")]
        ),
    }
    command = ftharness_command(
        "supervise", "--backup-dir", f"faulty://{remote_dir}",
        "--local-dir", str(tmp_path / "local"), "--", PYTHON, "-c", "pass",
    )  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize(("times", "code", "fetched"), [(1, 0, 5), (None, 73, None)])
def test_a_failing_manifest_read_is_retried_then_exit_73_moving_nothing(
    tmp_path, times, code, fetched
):
    remote_dir = seeded_remote(tmp_path)
    result = supervise_faulty(tmp_path, remote_dir, times)
    assert result.returncode == code, result.stderr[-3000:]
    if code:
        assert code == ExitCode.BACKUP_DIR_UNUSABLE
        assert "Traceback" not in result.stderr
    assert "ConnectionResetError" in result.stderr
    assert LocalCheckpointStore(tmp_path / "local").latest_step() == fetched
    remote = RemoteCheckpointStore(f"file://{remote_dir}")
    assert [ref.step for ref in remote.list_committed()] == [3, 5]
