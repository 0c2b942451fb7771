"""A stand-in for one worker of a multi-worker group, without TensorFlow.

It follows the worker protocol through ftharness's own `WorkerSession` and
ends each attempt as a real group member would, as told:

    --codes 79,79,0        exit code of attempt 1, 2, 3, ... (the last repeats):
                           79 PEER_STOPPED, 76 PEER_LOST, 1 a crash, 0 finished
    --commit               commit a checkpoint (step = 10 x attempt) before exiting
    --until-stopped DIR    commit step 10, touch DIR/ready, wait for SIGTERM, then
                           commit the final step 12 and exit 143, as the stopped
                           worker of a coordinated stop does
    --report FILE          append one JSON line per attempt: what it was given
                           (TF_CONFIG, the two timeouts) and the steps it found
    --hold DIR             in attempt 1, touch DIR/holding and wait for DIR/go
                           before exiting (the test acts in between)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from ftharness.config import ENV_GROUP_TIMEOUT, ENV_PEER_TIMEOUT, ENV_TF_CONFIG
from ftharness.worker import WorkerSession

parser = argparse.ArgumentParser()
parser.add_argument("--codes", default="0")
parser.add_argument("--commit", action="store_true")
parser.add_argument("--until-stopped", type=Path)
parser.add_argument("--report", type=Path)
parser.add_argument("--hold", type=Path)
args = parser.parse_args()

session = WorkerSession.open(backup_dir=None)
session.flags.install()
attempt = session.env.attempt
if args.report is not None:
    with args.report.open("a") as report:
        facts = {
            "attempt": attempt,
            "tf_config": os.environ.get(ENV_TF_CONFIG),
            "peer_timeout": os.environ.get(ENV_PEER_TIMEOUT),
            "group_timeout": os.environ.get(ENV_GROUP_TIMEOUT),
            "steps": [ref.step for ref in session.store.list_committed()],
        }
        report.write(json.dumps(facts) + "\n")


def commit(step: int) -> None:
    session.commit(step=step, epoch=0, batch=step, files={"data.bin": [b"w" * step]})


if args.until_stopped is not None:
    commit(10)
    (args.until_stopped / "ready").touch()
    deadline = time.monotonic() + 120  # bounded: a test that never signals fails, not hangs
    while session.flags.stop_signal is None and time.monotonic() < deadline:
        time.sleep(0.02)
    commit(12)
    session.exit_preempted()

if args.commit:
    commit(10 * attempt)
if args.hold is not None and attempt == 1:
    (args.hold / "holding").touch()
    deadline = time.monotonic() + 120
    while not (args.hold / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
codes = [int(code) for code in args.codes.split(",")]
raise SystemExit(codes[min(attempt, len(codes)) - 1])
