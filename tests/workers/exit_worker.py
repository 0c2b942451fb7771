"""A worker (no TensorFlow) that shows what runs when a stopped worker exits.

It appends one line to --out per event: "finally" (the script's own finally
block), "atexit" (a handler the script registered), "logged" (through a
logging FileHandler, flushed by logging's own atexit handler), and
"finalized" (the __del__ of a module-level object, run only by the
interpreter's teardown, which ftharness skips after a final checkpoint).
"""

from __future__ import annotations

import argparse
import atexit
import logging
import sys
import time
from pathlib import Path

from ftharness.worker import WorkerSession

parser = argparse.ArgumentParser()
parser.add_argument("--backup-dir", type=Path, required=True)
parser.add_argument("--out", type=Path, required=True)
parser.add_argument("--ready", type=Path, required=True)
args = parser.parse_args()


def note(event: str) -> None:
    with args.out.open("a") as out:
        out.write(event + "\n")


class Finalized:
    # Bound now: during the teardown, module globals and builtins may be gone.
    def __del__(self, _open=open, _path=str(args.out)) -> None:
        with _open(_path, "a") as out:
            out.write("finalized\n")


ALIVE_UNTIL_TEARDOWN = Finalized()
atexit.register(note, "atexit")
handler = logging.FileHandler(args.out.with_suffix(".log"))
logging.getLogger("exit_worker").addHandler(handler)
logging.getLogger("exit_worker").warning("logged")  # buffered until logging's flush
print("buffered on stdout", end="")  # no newline: flushed only at the end

session = WorkerSession.open(backup_dir=str(args.backup_dir))
session.flags.install()
args.ready.touch()
deadline = time.monotonic() + 60
while session.flags.stop_signal is None and time.monotonic() < deadline:
    time.sleep(0.02)
try:
    session.commit(step=1, epoch=0, batch=1, files={"data.bin": [b"w"]})
    session.exit_preempted()
finally:
    note("finally")
sys.exit("unreachable")
