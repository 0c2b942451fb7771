"""DirectoryLock: one writer per directory, named holders, inheritance."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ftharness.checkpoint.lock import LOCK_FILE_NAME, DirectoryLock, DirectoryLockedError

HOLD_LOCK = """
import sys, time
from pathlib import Path
from ftharness.checkpoint.lock import DirectoryLock
DirectoryLock.acquire(Path(sys.argv[1]), run_id="other-run", role="worker")
print("locked", flush=True)
time.sleep(60)
"""


def test_second_process_is_refused_and_told_who_holds_the_lock(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DirectoryLockedError) as refused:
            DirectoryLock.acquire(tmp_path, run_id="me", role="supervisor")
        assert f"worker pid {holder.pid}" in str(refused.value)
        assert "run other-run" in str(refused.value)
    finally:
        holder.kill()
        holder.wait()
    # SIGKILL released it: the kernel drops a dead process's flock.
    DirectoryLock.acquire(tmp_path, run_id="me", role="supervisor").release()


def test_release_lets_the_next_writer_in(tmp_path):
    DirectoryLock.acquire(tmp_path, run_id="a", role="worker").release()
    lock = DirectoryLock.acquire(tmp_path, run_id="b", role="worker")
    assert '"run_id": "b"' in (tmp_path / LOCK_FILE_NAME).read_text()
    lock.release()


def test_an_inherited_lock_is_held_by_the_child_after_the_parent_lets_go(tmp_path):
    lock = DirectoryLock.acquire(tmp_path, run_id="parent", role="supervisor")
    fd = lock.make_inheritable()
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path\n"
            "from ftharness.checkpoint.lock import DirectoryLock\n"
            f"DirectoryLock.inherited(Path(sys.argv[1]), {fd})\n"
            "print('adopted', flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
        pass_fds=(fd,),
    )
    try:
        assert child.stdout.readline().strip() == "adopted"
        lock.release()  # the supervisor is gone; its worker still writes
        with pytest.raises(DirectoryLockedError):
            DirectoryLock.acquire(tmp_path, run_id="intruder", role="supervisor")
    finally:
        child.kill()
        child.wait()


def test_adopting_a_descriptor_of_another_file_is_refused(tmp_path):
    other = os.open(tmp_path / "other", os.O_CREAT | os.O_RDWR)
    DirectoryLock.acquire(tmp_path, run_id="a", role="worker").release()
    with pytest.raises(ValueError, match="is not the lock of"):
        DirectoryLock.inherited(tmp_path, other)
    os.close(other)
