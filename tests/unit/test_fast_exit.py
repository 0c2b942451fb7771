"""A stopped worker's exit: the script's own clean-up runs, the interpreter's teardown not.

A real process (tests/workers/exit_worker.py), a real SIGTERM. Why the
teardown is skipped, and what it cost: ftharness/fast_exit.py.
"""

from __future__ import annotations

import signal
import subprocess

from support import BASE_ENV, PYTHON, WORKERS, wait_for

from ftharness.checkpoint.local import LocalCheckpointStore
from ftharness.exitcodes import ExitCode


def test_a_stopped_worker_runs_finally_and_atexit_but_skips_teardown(tmp_path):
    out, ready = tmp_path / "events", tmp_path / "ready"
    worker = subprocess.Popen(
        [PYTHON, str(WORKERS / "exit_worker.py"), "--backup-dir", str(tmp_path / "b"),
         "--out", str(out), "--ready", str(ready)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=BASE_ENV,
    )  # fmt: skip
    wait_for(ready.exists, 60, "the worker to start")
    worker.send_signal(signal.SIGTERM)
    stdout, stderr = worker.communicate(timeout=60)
    assert worker.returncode == ExitCode.PREEMPTED, stderr
    assert out.read_text().split() == ["finally", "atexit"]  # and no "finalized"
    assert out.with_suffix(".log").read_text() == "logged\n"
    assert stdout == b"buffered on stdout"
    assert b"final checkpoint committed; exiting on SIGTERM" in stderr
    assert [ref.step for ref in LocalCheckpointStore(tmp_path / "b").list_committed()] == [1]


def test_without_a_stop_the_interpreter_ends_as_usual(tmp_path):
    # The teardown does run the module-level object's __del__ in an ordinary
    # exit, so the first test's missing "finalized" is the fast exit's doing.
    out = tmp_path / "out"
    script = tmp_path / "plain.py"
    script.write_text(
        "class F:\n"
        f"    def __del__(self, _open=open, _path={str(out)!r}):\n"
        "        _open(_path, 'a').write('finalized')\n"
        "KEPT = F()\n"
        "raise SystemExit(143)\n"
    )
    result = subprocess.run([PYTHON, str(script)], env=BASE_ENV, timeout=60)
    assert result.returncode == 143
    assert out.read_text() == "finalized"
