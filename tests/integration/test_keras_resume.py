"""End to end with real TensorFlow: interrupted runs end bit-identical.

Every test compares against one uninterrupted run of the same training
(tests/workers/keras_worker.py = examples/train.py plus fault injection).
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
from support import (
    BATCHES_PER_EPOCH,
    PYTHON,
    TOTAL_BATCHES,
    TRAINING,
    batch_log,
    keras_worker_command,
    read_report,
    run_keras_worker,
    wait_for,
)

from ftharness.checkpoint.local import LocalCheckpointStore
from ftharness.exitcodes import ExitCode

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def interrupted_backups(tmp_path_factory) -> Path:
    """Checkpoints of a run that crashed at step 23 (committed: 15 and 20).

    Saved synchronously, so that which checkpoints exist does not depend on
    how far a background write got before the crash.
    """
    directory = tmp_path_factory.mktemp("interrupted") / "b"
    result = run_keras_worker(
        [*TRAINING, "--sleep", "0", "--sync-save", "--backup-dir", str(directory)],
        env={"EXIT_AT_STEP": "23", "EXIT_CODE": "1"},
    )
    assert result.returncode == 1, result.stderr
    assert [ref.step for ref in LocalCheckpointStore(directory).list_committed()] == [15, 20]
    return directory


def test_sigterm_mid_epoch_then_restart_ends_bit_identical(supervise, tmp_path, reference):
    """The article's case: a per-batch LR schedule with its counter in a callback."""
    backup, report, batches = tmp_path / "b", tmp_path / "report.json", tmp_path / "batches"
    first = supervise(["--backup-dir", str(backup), "--", *keras_worker_command(report, batches)])
    # Preempt in the middle of the second epoch, past the last periodic save.
    wait_for(lambda: len(batch_log(batches)) >= BATCHES_PER_EPOCH + 7, 90, "mid-epoch training")
    first.process.send_signal(signal.SIGTERM)
    assert first.wait(60) == ExitCode.PREEMPTED
    trained_before = batch_log(batches)
    assert BATCHES_PER_EPOCH < len(trained_before) < TOTAL_BATCHES
    store = LocalCheckpointStore(backup)
    # The final checkpoint is at the exact batch where training stopped.
    assert store.latest_step() == len(trained_before)
    assert "final checkpoint in" in first.log

    second = supervise(
        ["--backup-dir", str(backup), "--", *keras_worker_command(report, batches, sleep=0)],
        name="second",
    )
    assert second.wait(120) == ExitCode.FINISHED
    assert f"resuming at epoch 1, batch {len(trained_before) - BATCHES_PER_EPOCH}" in second.log
    facts = read_report(report)
    assert facts["digest"] == reference["digest"]
    assert facts["learning_rate"] == reference["learning_rate"]
    assert facts["iterations"] == reference["iterations"] == TOTAL_BATCHES
    # No batch trained twice, none skipped: the counter ran 1..N exactly once.
    assert batch_log(batches) == list(range(1, TOTAL_BATCHES + 1))


def test_sigkilled_worker_is_relaunched_and_ends_bit_identical(supervise, tmp_path, reference):
    backup, report, batches, pid_file = (
        tmp_path / n for n in ("b", "report.json", "batches", "pid")
    )
    run = supervise(
        [
            "--backup-dir",
            str(backup),
            "--backoff-initial",
            "0.1",
            "--",
            *keras_worker_command(report, batches),
        ],
        env={"WORKER_PID_FILE": str(pid_file)},
    )
    wait_for(lambda: len(batch_log(batches)) >= 27, 90, "training past step 27")
    os.kill(int(pid_file.read_text()), signal.SIGKILL)  # the OOM killer's way
    assert run.wait(120) == ExitCode.FINISHED
    assert "killed by SIGKILL" in run.log
    assert "launched attempt 2" in run.log
    facts = read_report(report)
    assert facts["digest"] == reference["digest"]
    assert facts["learning_rate"] == reference["learning_rate"]
    # Work since the last checkpoint was redone, never more: every batch
    # after the restore point appears twice at most.
    counts = batch_log(batches)
    assert counts[-1] == TOTAL_BATCHES
    assert set(counts) == set(range(1, TOTAL_BATCHES + 1))


def test_sigkill_inside_a_checkpoint_write_is_never_loaded(supervise, tmp_path, reference):
    backup, report, batches = tmp_path / "b", tmp_path / "report.json", tmp_path / "batches"
    run = supervise(
        [
            "--backup-dir",
            str(backup),
            "--backoff-initial",
            "0.1",
            "--",
            *keras_worker_command(report, batches, sleep=0),
        ],
        env={"KILL_DURING_WRITE_AT_STEP": "25"},
    )
    assert run.wait(120) == ExitCode.FINISHED
    log = run.log
    assert "killed by SIGKILL" in log
    assert "removed 1 unfinished checkpoint write(s): .tmp-ckpt-000000000025" in log
    assert "restored ckpt-000000000020" in log
    facts = read_report(report)
    assert facts["digest"] == reference["digest"]


def test_corrupt_newest_manifest_falls_back_to_the_previous_checkpoint(
    supervise, tmp_path, reference, interrupted_backups
):
    backup = tmp_path / "b"
    shutil.copytree(interrupted_backups, backup)
    (backup / "ckpt-000000000020" / "manifest.json").write_text('{"format": "ftharness-chec')
    report, batches = tmp_path / "report.json", tmp_path / "batches"
    run = supervise(
        ["--backup-dir", str(backup), "--", *keras_worker_command(report, batches, sleep=0)]
    )
    assert run.wait(120) == ExitCode.FINISHED
    assert "ckpt-000000000020 is corrupt: unreadable manifest" in run.log
    assert "restored ckpt-000000000015" in run.log
    assert read_report(report)["digest"] == reference["digest"]
    # Nothing deleted: the corrupt checkpoint was moved aside, intact.
    aside = [p for p in backup.iterdir() if p.name.startswith("corrupt-ckpt-000000000020")]
    assert len(aside) == 1
    assert (aside[0] / "arrays.bin").stat().st_size > 0


def test_truncated_arrays_file_falls_back_to_the_previous_checkpoint(
    supervise, tmp_path, reference, interrupted_backups
):
    backup = tmp_path / "b"
    shutil.copytree(interrupted_backups, backup)
    arrays = backup / "ckpt-000000000020" / "arrays.bin"
    size = arrays.stat().st_size
    with open(arrays, "r+b") as file:
        file.truncate(size // 2)
    report, batches = tmp_path / "report.json", tmp_path / "batches"
    run = supervise(
        ["--backup-dir", str(backup), "--", *keras_worker_command(report, batches, sleep=0)]
    )
    assert run.wait(120) == ExitCode.FINISHED
    assert f"arrays.bin has {size // 2} bytes, manifest says {size}" in run.log
    assert "restored ckpt-000000000015" in run.log
    assert read_report(report)["digest"] == reference["digest"]


def test_checkpoint_of_another_architecture_is_refused_and_kept(
    supervise, tmp_path, interrupted_backups
):
    backup = tmp_path / "b"
    shutil.copytree(interrupted_backups, backup)
    before = {
        p.relative_to(backup): p.read_bytes()
        for p in backup.rglob("*")
        if p.is_file() and not p.relative_to(backup).parts[0].startswith(".ftharness")
    }
    report, batches = tmp_path / "report.json", tmp_path / "batches"
    run = supervise(
        [
            "--backup-dir",
            str(backup),
            "--",
            *keras_worker_command(report, batches, "--hidden-units", "32", sleep=0),
        ]
    )
    assert run.wait(120) == ExitCode.INCOMPATIBLE_CHECKPOINT
    errors = [line for line in run.log.splitlines() if line.startswith("ftharness: error:")]
    assert len(errors) == 1
    assert "was written by another model" in errors[0]
    assert "sequential/dense/kernel is float32[8, 32] here" in errors[0]
    assert run.log.count("launched attempt") == 1  # fatal: not retried
    after = {
        p.relative_to(backup): p.read_bytes()
        for p in backup.rglob("*")
        if p.is_file() and not p.relative_to(backup).parts[0].startswith(".ftharness")
    }
    assert after == before
    assert not report.exists()


def test_standalone_worker_refuses_a_directory_held_by_a_supervisor(supervise, tmp_path):
    backup, ready = tmp_path / "b", tmp_path / "ready"
    waiter = f"import pathlib, time; pathlib.Path({str(ready)!r}).touch(); time.sleep(60)"
    holder = supervise(["--backup-dir", str(backup), "--", PYTHON, "-c", waiter])
    wait_for(ready.exists, 30, "the supervised worker")
    result = run_keras_worker([*TRAINING, "--backup-dir", str(backup)])
    assert result.returncode == ExitCode.BACKUP_DIR_LOCKED
    assert f"supervisor pid {holder.process.pid}" in result.stderr
    assert holder.process.poll() is None  # the holder is untouched
