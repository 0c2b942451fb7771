"""A framework-free worker that commits large checkpoints quickly.

argv: STEPS MEGABYTES INTERVAL PROGRESS_FILE. Commits checkpoint 1..STEPS of
MEGABYTES random bytes each, INTERVAL seconds apart, and appends
"<step> <time.time()>" to PROGRESS_FILE after each commit.
"""

from __future__ import annotations

import os
import sys
import time

from ftharness.worker import WorkerSession

steps, megabytes, interval, progress = (
    int(sys.argv[1]),
    int(sys.argv[2]),
    float(sys.argv[3]),
    sys.argv[4],
)
session = WorkerSession.open(backup_dir=None)
session.flags.install()
latest = session.store.latest_step() or 0
payload = os.urandom(megabytes * 1024 * 1024)
for step in range(latest + 1, steps + 1):
    time.sleep(interval)
    session.commit(step=step, epoch=0, batch=step, files={"arrays.bin": [payload]})
    with open(progress, "a") as file:
        file.write(f"{step} {time.time()}\n")
    if session.flags.stop_signal is not None:
        session.exit_preempted()
