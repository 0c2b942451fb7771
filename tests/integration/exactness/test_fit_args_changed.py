"""A restart that would train something else is refused in one line, unless allowed;
more `epochs` continue to the new total."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from support import BASE_ENV, PYTHON, REPO, WORKERS

from ftharness.checkpoint.local import LocalCheckpointStore
from ftharness.exitcodes import ExitCode

pytestmark = pytest.mark.slow


def run_arrays_case(directory: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, str(WORKERS / "exactness_worker.py"), "arrays", "--backup-dir",
         str(directory / "b"), "--report", str(directory / "report.json")],
        capture_output=True,
        text=True,
        env={**BASE_ENV, **env},
        cwd=REPO,
        timeout=240,
    )  # fmt: skip


def test_another_batch_size_is_refused_then_allowed_and_more_epochs_continue(tmp_path):
    first = run_arrays_case(tmp_path, INTERRUPT="sigterm:5")
    assert first.returncode == ExitCode.PREEMPTED, first.stderr[-3000:]
    store = LocalCheckpointStore(tmp_path / "b")
    before = [ref.name for ref in store.list_committed()]

    refused = run_arrays_case(tmp_path, FIT_BATCH_SIZE="16")
    assert refused.returncode == ExitCode.USAGE_ERROR == 64, refused.stderr[-3000:]
    errors = [line for line in refused.stderr.splitlines() if line.startswith("ftharness: error:")]
    assert len(errors) == 1
    assert "fit() arguments changed since checkpoint" in errors[0]
    assert "batch_size 8 -> 16" in errors[0]
    assert "allow_changed_fit_args=True" in errors[0]
    assert [ref.name for ref in store.list_committed()] == before  # nothing touched
    assert not (tmp_path / "report.json").exists()

    elsewhere = tmp_path / "copy"
    shutil.copytree(tmp_path / "b", elsewhere / "b")
    allowed = run_arrays_case(elsewhere, FIT_SHUFFLE="0", ALLOW_CHANGED_FIT_ARGS="1")
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert "shuffle True -> False" in allowed.stderr
    assert "resuming at epoch 0, batch 5" in allowed.stderr

    # "Train one more epoch": the training so far is the same; one warning.
    more = run_arrays_case(tmp_path, FIT_EPOCHS="4")
    assert more.returncode == 0, more.stderr[-3000:]
    warnings = [line for line in more.stderr.splitlines() if "epochs 3 -> 4" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0]
    assert "resuming at epoch 0, batch 5" in more.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["iterations"] == 4 * 8  # 4 epochs of 8 batches
    assert report["history_epochs"] == [0, 1, 2, 3]
