"""Background checkpoint writes are as exact as synchronous ones, and as safe.

Real TensorFlow, real processes and signals. The reference is one
uninterrupted run that commits every checkpoint synchronously
(`--sync-save`); faults are injected into the writer thread by
tests/workers/async_worker.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from support import (
    BASE_ENV,
    PYTHON,
    TOTAL_BATCHES,
    TRAINING,
    WORKERS,
    batch_log,
    read_report,
    wait_for,
)

from ftharness.checkpoint.local import LocalCheckpointStore
from ftharness.exitcodes import ExitCode

pytestmark = pytest.mark.slow

WRITER_THREAD = "ftharness-checkpoint-writer"


def worker_command(*extra: str, sleep: float = 0.0) -> list[str]:
    return [PYTHON, str(WORKERS / "async_worker.py"), *TRAINING, "--sleep", str(sleep), *extra]


def run_alone(tmp_path: Path, *extra: str, env: dict | None = None):
    """The worker without a supervisor, to its end."""
    return subprocess.run(
        worker_command(*extra),
        capture_output=True,
        text=True,
        env={**BASE_ENV, **(env or {})},
        timeout=180,
        cwd=tmp_path,
    )


def committed_steps(backup: Path) -> list[int]:
    return [ref.step for ref in LocalCheckpointStore(backup).list_committed()]


def temporaries(backup: Path) -> list[str]:
    return sorted(p.name for p in backup.iterdir() if p.name.startswith(".tmp-"))


@pytest.fixture(scope="module")
def sync_reference(tmp_path_factory) -> dict:
    """The uninterrupted run with synchronous saves: report and backup dir."""
    directory = tmp_path_factory.mktemp("sync")
    report = directory / "report.json"
    result = run_alone(
        directory,
        "--sync-save",
        "--keep-backup",
        "--backup-dir",
        str(directory / "b"),
        "--report",
        str(report),
    )
    assert result.returncode == 0, result.stderr
    facts = read_report(report)
    assert facts["batches"] == TOTAL_BATCHES
    return {**facts, "backup": directory / "b"}


def test_async_run_writes_the_same_checkpoints_as_a_synchronous_one(tmp_path, sync_reference):
    report, backup = tmp_path / "report.json", tmp_path / "b"
    result = run_alone(
        tmp_path, "--keep-backup", "--backup-dir", str(backup), "--report", str(report)
    )
    assert result.returncode == 0, result.stderr
    facts = read_report(report)
    assert facts["digest"] == sync_reference["digest"]
    assert facts["learning_rate"] == sync_reference["learning_rate"]
    assert "training stalled" in result.stderr
    steps = committed_steps(backup)
    # The last periodic save, and the end of training (kept: --keep-backup).
    assert steps == committed_steps(sync_reference["backup"]) == [45, TOTAL_BATCHES]
    # Bit for bit: the arrays and the JSON state (RNG, callbacks, position).
    for name in ("arrays.bin", "state.json"):
        for step in steps:
            ours = (backup / f"ckpt-{step:012d}" / name).read_bytes()
            theirs = (sync_reference["backup"] / f"ckpt-{step:012d}" / name).read_bytes()
            assert ours == theirs, f"{name} of step {step} differs"


def test_sigterm_during_a_background_write_abandons_it_for_the_final_one(
    supervise, tmp_path, sync_reference
):
    backup, report, batches, marker = (
        tmp_path / n for n in ("b", "report.json", "batches", "stalled")
    )
    first = supervise(
        [
            "--backup-dir",
            str(backup),
            "--",
            *worker_command("--report", str(report), "--batch-log", str(batches), sleep=0.05),
        ],
        env={
            "SLOW_WRITE_AT_STEP": "25",
            "SLOW_WRITE_SECONDS": "3",
            "STALLED_MARKER": str(marker),
        },
    )
    wait_for(marker.exists, 90, "the background write of checkpoint 25 to stall")
    assert marker.read_text() == WRITER_THREAD
    first.process.send_signal(signal.SIGTERM)
    assert first.wait(60) == ExitCode.PREEMPTED
    trained = len(batch_log(batches))
    assert 25 < trained < TOTAL_BATCHES
    # The write in flight (older state) was abandoned, never committed, its
    # temporary removed; the committed checkpoints before it were untouched,
    # and the final checkpoint holds the newest state (beside keep = 2 older
    # ones: a final checkpoint leaves its retention to the next run).
    assert "the background write of ckpt-000000000025 was abandoned" in first.log
    assert "BackgroundWriteError" not in first.log
    assert committed_steps(backup) == [15, 20, trained]
    assert temporaries(backup) == []
    assert (
        LocalCheckpointStore(backup).verify(LocalCheckpointStore(backup).list_committed()[0]) == []
    )

    second = supervise(
        ["--backup-dir", str(backup), "--", *worker_command("--report", str(report))],
        name="second",
    )
    assert second.wait(120) == ExitCode.FINISHED
    assert f"restored ckpt-{trained:012d}" in second.log
    facts = read_report(report)
    assert facts["digest"] == sync_reference["digest"]
    assert facts["learning_rate"] == sync_reference["learning_rate"]


def test_sigkill_during_a_background_write_never_leaves_a_torn_checkpoint(
    supervise, tmp_path, sync_reference
):
    backup, report, batches, marker, pid_file = (
        tmp_path / n for n in ("b", "report.json", "batches", "stalled", "pid")
    )
    run = supervise(
        [
            "--backup-dir",
            str(backup),
            "--backoff-initial",
            "0.1",
            "--",
            *worker_command("--report", str(report), "--batch-log", str(batches), sleep=0.05),
        ],
        env={
            "SLOW_WRITE_AT_STEP": "25",
            "SLOW_WRITE_SECONDS": "forever",
            "STALLED_MARKER": str(marker),
            "WORKER_PID_FILE": str(pid_file),
        },
    )
    wait_for(marker.exists, 90, "the background write of checkpoint 25 to stall")
    # Training goes on while checkpoint 25 is half written...
    wait_for(lambda: len(batch_log(batches)) >= 28, 60, "training past step 28")
    assert committed_steps(backup) == [15, 20]
    assert [name.split("-")[2] for name in temporaries(backup)] == ["000000000025"]
    # ... and a SIGKILL now leaves only an unfinished temporary directory.
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert run.wait(120) == ExitCode.FINISHED
    log = run.log
    assert "killed by SIGKILL" in log
    assert "removed 1 unfinished checkpoint write(s): .tmp-ckpt-000000000025" in log
    assert "restored ckpt-000000000020" in log
    assert read_report(report)["digest"] == sync_reference["digest"]


def test_a_failed_background_write_surfaces_at_the_next_save(tmp_path, sync_reference):
    backup, report, batches = tmp_path / "b", tmp_path / "report.json", tmp_path / "batches"
    args = ("--backup-dir", str(backup), "--report", str(report), "--batch-log", str(batches))
    failed = run_alone(tmp_path, *args, env={"FAIL_WRITE_AT_STEP": "25"})
    assert failed.returncode == 1
    assert "writing ckpt-000000000025 in the background failed" in failed.stderr
    assert "BackgroundWriteError" in failed.stderr
    assert "No space left on device" in failed.stderr
    # Training went on to the next save (step 30), which raised the error.
    assert batch_log(batches)[-1] == 30
    assert committed_steps(backup) == [15, 20]
    assert temporaries(backup) == []
    assert not report.exists()

    resumed = run_alone(tmp_path, *args, env={"FTHARNESS_ATTEMPT": "2"})
    assert resumed.returncode == 0, resumed.stderr
    assert "restored ckpt-000000000020" in resumed.stderr
    assert read_report(report)["digest"] == sync_reference["digest"]


def test_a_failed_last_write_surfaces_when_training_ends(tmp_path):
    backup, report = tmp_path / "b", tmp_path / "report.json"
    failed = run_alone(
        tmp_path,
        "--backup-dir",
        str(backup),
        "--report",
        str(report),
        env={"FAIL_WRITE_AT_STEP": "45"},  # the last save of the run
    )
    assert failed.returncode == 1
    assert "BackgroundWriteError: writing ckpt-000000000045 in the background failed" in (
        failed.stderr
    )
    assert committed_steps(backup) == [35, 40]
    assert not report.exists()  # fit() raised: the failure is not hidden
