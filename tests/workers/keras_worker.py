"""examples/train.py with deterministic fault injection for the tests.

Environment:
  WORKER_PID_FILE             write this process's pid here
  KILL_DURING_WRITE_AT_STEP   on the first attempt, SIGKILL ourselves half-way
                              through writing the arrays of checkpoint N
  EXIT_AT_STEP / EXIT_CODE    on the first attempt, exit with EXIT_CODE after
                              the batch that reaches step N (a crash)
  EXIT_AFTER_FIT              on the first attempt, exit with this code once
                              fit() has returned (a crash after training)
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "examples"))

import train  # noqa: E402

from ftharness.checkpoint import local  # noqa: E402
from ftharness.checkpoint.manifest import checkpoint_name  # noqa: E402

first_attempt = os.environ.get("FTHARNESS_ATTEMPT", "1") == "1"

if os.environ.get("WORKER_PID_FILE"):
    Path(os.environ["WORKER_PID_FILE"]).write_text(str(os.getpid()))

if first_attempt and os.environ.get("KILL_DURING_WRITE_AT_STEP"):
    doomed = checkpoint_name(int(os.environ["KILL_DURING_WRITE_AT_STEP"]))
    write_file = local._write_file

    def write_then_die(path, chunks):
        if path.name == "arrays.bin" and doomed in path.parent.name:
            chunks = list(chunks)
            write_file(path, chunks[: len(chunks) // 2])  # half the data is on disk
            os.kill(os.getpid(), signal.SIGKILL)
        return write_file(path, chunks)

    local._write_file = write_then_die

if first_attempt and os.environ.get("EXIT_AT_STEP"):
    exit_step = int(os.environ["EXIT_AT_STEP"])

    count_batch = train.PerBatchLearningRate.on_train_batch_end

    # Patched in place, not subclassed: the callback's class name is part of
    # the checkpoint's identity for its state.
    def count_then_maybe_exit(self, batch, logs=None):
        count_batch(self, batch, logs)
        if self.count == exit_step:
            os._exit(int(os.environ.get("EXIT_CODE", "1")))

    train.PerBatchLearningRate.on_train_batch_end = count_then_maybe_exit

if first_attempt and os.environ.get("EXIT_AFTER_FIT"):
    # A crash after training (in evaluation, in model.save): fit() returned.
    fit = train.keras.Model.fit

    def fit_then_exit(self, *args, **kwargs):
        fit(self, *args, **kwargs)
        os._exit(int(os.environ["EXIT_AFTER_FIT"]))

    train.keras.Model.fit = fit_then_exit

sys.exit(train.main(sys.argv[1:]))
