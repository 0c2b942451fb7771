"""Test helpers: run the real `ftharness` and real workers as subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORKERS = REPO / "tests" / "workers"
PYTHON = sys.executable
# Quiet TensorFlow's C++ logging in every child process.
BASE_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
for _name in [n for n in BASE_ENV if n.startswith("FTHARNESS_")]:
    del BASE_ENV[_name]


@contextmanager
def as_if_supervised(local_dir: Path) -> Iterator[dict[str, str]]:
    """The environment a supervisor gives its worker, with the real lock held.

    The worker adopts (and at its end closes) a duplicate of our descriptor:
    flock belongs to the open file, so the lock stays held by us until we
    release it, as the supervisor's does. Pass the descriptor on to a child
    with `pass_fds=(int(env[ENV_LOCK_FD]),)`.
    """
    from ftharness.checkpoint.lock import DirectoryLock
    from ftharness.config import ENV_CHECKPOINT_DIR, ENV_LOCK_FD

    local_dir.mkdir(parents=True, exist_ok=True)
    lock = DirectoryLock.acquire(local_dir, run_id="test-supervisor", role="supervisor")
    worker_fd = os.dup(lock.fd)
    os.set_inheritable(worker_fd, True)
    try:
        yield {ENV_CHECKPOINT_DIR: str(local_dir), ENV_LOCK_FD: str(worker_fd)}
    finally:
        # The worker may have closed it, and the number been reused since.
        try:
            ours = os.path.samestat(os.fstat(worker_fd), os.fstat(lock.fd))
        except OSError:
            ours = False
        if ours:
            os.close(worker_fd)
        lock.release()


def ftharness_command(*args: str) -> list[str]:
    return [PYTHON, "-m", "ftharness", *args]


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    """Poll until `predicate()` is truthy; fail the test with `what` if it never is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Supervised:
    """A real `ftharness supervise` process with its stderr in a file."""

    def __init__(
        self, args: list[str], log_path: Path, env: dict | None = None, cwd: Path | None = None
    ):
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 -- closed in wait()/kill()
        self.process = subprocess.Popen(
            ftharness_command("supervise", *args),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**BASE_ENV, **(env or {})},
            cwd=cwd or REPO,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


def run_keras_worker(
    args: list[str], env: dict | None = None, timeout: float = 180
) -> subprocess.CompletedProcess:
    """Run the Keras test worker alone (no supervisor), to completion."""
    return subprocess.run(
        [PYTHON, str(WORKERS / "keras_worker.py"), *args],
        capture_output=True,
        text=True,
        env={**BASE_ENV, **(env or {})},
        timeout=timeout,
        cwd=REPO,
    )


def read_report(path: Path) -> dict:
    return json.loads(path.read_text())


def batch_log(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


# The small Keras training most end-to-end tests share (tests/workers/keras_worker.py).
EPOCHS = 3
BATCHES_PER_EPOCH = 16  # 128 samples / batch size 8
TOTAL_BATCHES = EPOCHS * BATCHES_PER_EPOCH
TRAINING = ["--epochs", str(EPOCHS), "--samples", "128", "--batch-size", "8", "--save-freq", "5"]


def keras_worker_command(
    report: Path, batches: Path, *extra: str, sleep: float = 0.05
) -> list[str]:
    return [PYTHON, str(WORKERS / "keras_worker.py"), *TRAINING, "--sleep", str(sleep),
            "--report", str(report), "--batch-log", str(batches), *extra]  # fmt: skip


def uninterrupted_reference(directory: Path) -> dict:
    """Run the shared training once, never interrupted: its final digest, learning rate."""
    report = directory / "report.json"
    result = run_keras_worker(
        [*TRAINING, "--sleep", "0", "--backup-dir", str(directory / "b"), "--report", str(report)]
    )
    assert result.returncode == 0, result.stderr
    facts = read_report(report)
    assert facts["batches"] == TOTAL_BATCHES
    return facts


class SupervisorRun:
    """A finished `ftharness supervise` run: its exit code and its log."""

    def __init__(self, returncode: int, log: str) -> None:
        self.returncode = returncode
        self.log = log


def run_supervisor(
    tmp_path: Path,
    command: list[str],
    options: list[str] = (),
    env: dict | None = None,
    timeout: float = 120,
) -> SupervisorRun:
    """Run `ftharness supervise` on `command` to its end; an env value of None unsets it."""
    environ = {**BASE_ENV, **{k: v for k, v in (env or {}).items() if v is not None}}
    for name, value in (env or {}).items():
        if value is None:
            environ.pop(name, None)
    result = subprocess.run(
        ftharness_command(
            "supervise", "--backup-dir", str(tmp_path / "backups"), *options, "--", *command
        ),
        capture_output=True,
        text=True,
        env=environ,
        timeout=timeout,
        cwd=REPO,
    )
    return SupervisorRun(result.returncode, result.stderr)


def wait_for_batches(batches: Path, count: int, timeout: float = 120, what: str = "") -> int:
    """Wait until a worker's batch log (--batch-log) has at least `count` batches."""
    wait_for(lambda: len(batch_log(batches)) >= count, timeout, what or f"{count} trained batches")
    return len(batch_log(batches))


def commit_checkpoint(store, step: int, payload: bytes | None = None):
    """A small committed checkpoint at `step` (arrays.bin, state.json), for storage tests."""
    from ftharness.checkpoint.manifest import WriterInfo

    return store.commit(
        step=step,
        epoch=0,
        batch=step,
        writer=WriterInfo("host", 1, "run"),
        files={
            "arrays.bin": [payload if payload is not None else b"weights-%d" % step],
            "state.json": [b"{}"],
        },
    )
