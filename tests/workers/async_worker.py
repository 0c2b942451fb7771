"""examples/train.py with faults injected into background checkpoint writes.

On the first attempt only (FTHARNESS_ATTEMPT unset or 1), for checkpoint N:
  SLOW_WRITE_AT_STEP=N        the writer thread writes the first piece of
  SLOW_WRITE_SECONDS=S        arrays.bin, touches STALLED_MARKER, stalls S
  STALLED_MARKER=PATH         seconds (or forever with S = "forever"), then
                              writes the rest, piece by piece as the real
                              write takes them (a disk that stalled)
  FAIL_WRITE_AT_STEP=N        the write of arrays.bin fails with ENOSPC
The thread that wrote is named in STALLED_MARKER, so tests can check that
the write ran off the training thread. WORKER_PID_FILE: write our pid there.
"""

from __future__ import annotations

import errno
import itertools
import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "examples"))

import train  # noqa: E402

from ftharness.checkpoint import local  # noqa: E402
from ftharness.checkpoint.manifest import checkpoint_name  # noqa: E402

first_attempt = os.environ.get("FTHARNESS_ATTEMPT", "1") == "1"
if os.environ.get("WORKER_PID_FILE"):
    Path(os.environ["WORKER_PID_FILE"]).write_text(str(os.getpid()))
write_file = local._write_file


def doomed(path: Path, variable: str) -> bool:
    step = os.environ.get(variable)
    return (
        first_attempt
        and step is not None
        and path.name == "arrays.bin"
        and path.parent.name.startswith(f"{local.TEMPORARY_PREFIX}{checkpoint_name(int(step))}-")
    )


def faulty_write(path: Path, chunks):
    if doomed(path, "FAIL_WRITE_AT_STEP"):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    if doomed(path, "SLOW_WRITE_AT_STEP"):
        pieces = iter(chunks)  # taken lazily, as the real write does
        first = next(pieces)
        with open(path, "wb") as file:  # part of the data is on disk, uncommitted
            file.write(first)
        Path(os.environ["STALLED_MARKER"]).write_text(threading.current_thread().name)
        seconds = os.environ.get("SLOW_WRITE_SECONDS", "forever")
        time.sleep(3600 if seconds == "forever" else float(seconds))
        chunks = itertools.chain([first], pieces)
    return write_file(path, chunks)


local._write_file = faulty_write

sys.exit(train.main(sys.argv[1:]))
