"""A worker that leaves an orphan behind, to test reaping as PID 1 / subreaper.

Writes JSON to argv[1]: the orphan's pid, its parent after re-parenting, and
whether it was reaped (gone from /proc) or left a zombie.
"""

from __future__ import annotations

import json
import os
import sys
import time

report_path = sys.argv[1]
read_end, write_end = os.pipe()
child = os.fork()
if child == 0:
    orphan = os.fork()
    if orphan == 0:
        original_parent = os.getppid()
        deadline = time.monotonic() + 5
        while os.getppid() == original_parent and time.monotonic() < deadline:
            time.sleep(0.01)
        os.write(write_end, f"{os.getpid()} {os.getppid()}".encode())
        time.sleep(0.2)
        os._exit(0)  # the orphan exits: only its new parent can reap it
    os._exit(0)  # the middle process exits at once, orphaning the grandchild
os.waitpid(child, 0)
orphan_pid, new_parent = (int(v) for v in os.read(read_end, 64).split())


def state_of(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


deadline = time.monotonic() + 5
while state_of(orphan_pid) not in (None, "Z") and time.monotonic() < deadline:
    time.sleep(0.01)
time.sleep(0.5)  # give the reaper time to act on SIGCHLD
with open(report_path, "w") as report:
    json.dump(
        {
            "orphan": orphan_pid,
            "new_parent": new_parent,
            "state": state_of(orphan_pid),
            "my_parent": os.getppid(),
        },
        report,
    )
