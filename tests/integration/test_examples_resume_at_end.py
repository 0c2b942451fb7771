"""Every training example, restarted after its final checkpoint, exits 0.

A worker that dies after its last checkpoint (or after training, in
evaluation or `model.save`) is relaunched by the supervisor: it must resume
at its very end and finish, not crash-loop. The test process plays the
supervisor through the worker protocol (FTHARNESS_* variables), so the
backup is kept after success, as `ftharness supervise` keeps it until the
job exits 0. examples/preemption_demo.py is not a training job: it runs
train.py under the supervisor itself (and resumes it in its step 3).
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
    as_if_supervised,
    batch_log,
)

from ftharness.checkpoint.local import DELETE_ON_SUCCESS_MARKER, LocalCheckpointStore
from ftharness.config import ENV_LOCK_FD, ENV_RUN_ID
from ftharness.exitcodes import ExitCode

pytestmark = pytest.mark.slow

EXAMPLES = {
    "train.py": [*TRAINING, "--sleep", "0"],
    "custom_loop.py": ["--steps", "30", "--save-freq", "10"],
}
FINAL_STEP = {"train.py": TOTAL_BATCHES, "custom_loop.py": 30}
# How each example's log names the resume point.
RESUMED_AT_END = {
    "train.py": f"(step {TOTAL_BATCHES})",
    "custom_loop.py": "resuming at step 30",
}


def run_example(name: str, local: Path, report: Path) -> subprocess.CompletedProcess:
    with as_if_supervised(local) as supervised:
        return subprocess.run(
            [PYTHON, str(REPO / "examples" / name), *EXAMPLES[name], "--report", str(report)],
            capture_output=True,
            text=True,
            env={**BASE_ENV, **supervised, ENV_RUN_ID: "examples-test"},
            pass_fds=(int(supervised[ENV_LOCK_FD]),),
            cwd=REPO,
            timeout=300,
        )


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_an_example_restarted_after_its_final_checkpoint_exits_0(name, tmp_path):
    local, report = tmp_path / "local", tmp_path / "report.json"
    first = run_example(name, local, report)
    assert first.returncode == 0, first.stderr[-3000:]
    finished = json.loads(report.read_text())
    store = LocalCheckpointStore(local)
    assert store.latest_step() == FINAL_STEP[name]
    assert (local / DELETE_ON_SUCCESS_MARKER).is_file()  # the supervisor would delete now

    again = run_example(name, local, report)
    assert again.returncode == 0, again.stderr[-3000:]
    assert RESUMED_AT_END[name] in again.stderr  # resumed at its very end
    assert json.loads(report.read_text())["digest"] == finished["digest"]


def test_a_worker_crashing_after_fit_resumes_from_the_end_of_training(supervise, tmp_path):
    backup, report, batches = tmp_path / "b", tmp_path / "report.json", tmp_path / "batches"
    run = supervise(
        ["--backup-dir", str(backup), "--backoff-initial", "0", "--",
         PYTHON, str(REPO / "tests" / "workers" / "keras_worker.py"), *TRAINING,
         "--sleep", "0", "--report", str(report), "--batch-log", str(batches)],
        env={"EXIT_AFTER_FIT": "1"},
    )  # fmt: skip
    assert run.wait(300) == ExitCode.FINISHED, run.log[-3000:]
    epochs = TOTAL_BATCHES // BATCHES_PER_EPOCH
    assert f"resuming at epoch {epochs}, batch 0 (step {TOTAL_BATCHES})" in run.log
    # Nothing trained twice: the relaunch found training done.
    assert batch_log(batches) == list(range(1, TOTAL_BATCHES + 1))
    assert json.loads(report.read_text())["iterations"] == TOTAL_BATCHES
