"""Process helpers: wait-status decoding and the signal inbox."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

from ftharness.process import (
    HANDLED_SIGNALS,
    ExitStatus,
    SignalInbox,
    reap_children,
    spawn_in_new_group,
)


def test_exit_status_of_an_exit_code_and_of_a_signal():
    _, status = os.waitpid(subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"]).pid, 0)
    assert ExitStatus.from_wait_status(status) == ExitStatus(code=3)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    child.kill()
    _, status = os.waitpid(child.pid, 0)
    killed = ExitStatus.from_wait_status(status)
    assert killed == ExitStatus(signal=signal.SIGKILL)
    assert killed.shell_code == 137
    assert killed.describe() == "killed by SIGKILL"


def test_spawned_worker_leads_its_own_group_with_clean_signal_state(tmp_path):
    inbox = SignalInbox()  # installs our handlers, as the supervisor does
    secret_fd, _ = os.pipe()  # ours, not inheritable: must not leak into the worker
    try:
        report = tmp_path / "status"
        script = (
            'cat /proc/self/status > "$1"; ls /proc/self/fd > "$1.fds"; '
            'cut -d" " -f5 /proc/$$/stat > "$1.pgid"'
        )
        pid = spawn_in_new_group(["sh", "-c", script, "sh", str(report)], os.environ)
        reaped = {}
        while pid not in reaped:
            if signal.SIGCHLD in inbox.wait(10):
                reaped.update(reap_children())
        assert reaped[pid] == ExitStatus(code=0)
        status = dict(
            line.split(":\t", 1) for line in report.read_text().splitlines() if ":\t" in line
        )
        # Python ignores SIGPIPE and SIGXFSZ; the worker must not inherit that,
        # nor anything of our signal handling.
        ignored, blocked = (int(status[key].strip(), 16) for key in ("SigIgn", "SigBlk"))
        for signum in (signal.SIGPIPE, signal.SIGXFSZ, *HANDLED_SIGNALS):
            assert not ignored & (1 << (signum - 1)), signal.Signals(signum).name
            assert not blocked & (1 << (signum - 1)), signal.Signals(signum).name
        assert str(secret_fd) not in (tmp_path / "status.fds").read_text().split()
        assert int((tmp_path / "status.pgid").read_text()) == pid
    finally:
        inbox.close()


def test_signals_arrive_in_the_inbox_as_data():
    inbox = SignalInbox()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGHUP)
        received = []
        while len(received) < 2:
            received += inbox.wait(5)
        assert received == [signal.SIGUSR1, signal.SIGHUP]
        assert inbox.wait(0) == []
    finally:
        inbox.close()


def test_a_posted_message_wakes_the_inbox_and_is_told_from_a_signal():
    inbox = SignalInbox()
    notice = object()
    try:
        poster = threading.Thread(target=inbox.post, args=(notice,))
        os.kill(os.getpid(), signal.SIGUSR1)
        poster.start()
        poster.join()
        received = []
        while len(received) < 2:
            received += inbox.wait(5)
        # The signal as its number, the notice as itself: never a SIGUSR1 in disguise.
        assert sorted(received, key=lambda item: item is notice) == [signal.SIGUSR1, notice]
        assert inbox.wait(0) == []
    finally:
        inbox.close()
