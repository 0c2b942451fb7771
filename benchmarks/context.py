"""What every benchmark shares: settings, a work directory, worker processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def clean_env(**extra: str) -> dict[str, str]:
    """Our environment without FTHARNESS_* (a benchmark run under a
    supervisor must not hand its directory to the workers), TF quiet."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FTHARNESS_")}
    env.update({"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1", **extra})
    return env


@dataclass
class Context:
    settings: Settings
    work_dir: Path
    python: str = sys.executable
    _calibration: dict | None = field(default=None, repr=False)
    _counter: int = 0
    # Extra sections of RESULTS.md (heading -> markdown), e.g. the scaling table.
    sections: dict[str, str] = field(default_factory=dict)

    # -- directories -----------------------------------------------------------

    def fresh_dir(self, name: str) -> Path:
        """A new empty directory under the work directory."""
        self._counter += 1
        path = self.work_dir / f"{self._counter:03d}-{name}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    # -- processes -------------------------------------------------------------

    def worker_command(self, mode: str, *args: object) -> list[str]:
        return self.worker_command_for(self.settings, mode, *args)

    def worker_command_for(self, settings: Settings, mode: str, *args: object) -> list[str]:
        """A worker with other settings than the run's (the scaling benchmark's sizes)."""
        config = json.dumps(asdict(settings))
        return [
            self.python,
            "-m",
            "benchmarks.worker",
            mode,
            "--config",
            config,
            *map(str, args),
        ]

    def ftharness_command(self, *args: object) -> list[str]:
        return [self.python, "-m", "ftharness", *map(str, args)]

    def start(self, command: list[str], log: Path, **kwargs) -> subprocess.Popen:
        """Start a process with stdout and stderr to `log`, from the repository root."""
        with open(log, "ab") as output:
            return subprocess.Popen(
                command,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=kwargs.pop("env", None) or clean_env(),
                **kwargs,
            )

    def run_worker(self, mode: str, *args: object, timeout: float = 600) -> dict:
        """Run a worker to completion and return its JSON result."""
        directory = self.fresh_dir(mode)
        out, log = directory / "result.json", directory / "worker.log"
        process = self.start(self.worker_command(mode, *args, "--out", out), log)
        code = wait(process, timeout)
        if code != 0 or not out.exists():
            raise RuntimeError(f"worker {mode} failed with {code}:\n{tail(log)}")
        return json.loads(out.read_text())

    def calibration(self) -> dict:
        """Median step time and state size of the model (measured once)."""
        if self._calibration is None:
            self._calibration = self.run_worker("calibrate")
        return self._calibration

    def remember_step(self, step_seconds: float, state_bytes: int) -> None:
        """A benchmark that measured the step time shares it (saves a calibration)."""
        if self._calibration is None:
            self._calibration = {"step_seconds": step_seconds, "state_bytes": state_bytes}


def wait(process: subprocess.Popen, timeout: float) -> int:
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


def tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_for_path(path: Path, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {path} appeared")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout} s")
        time.sleep(0.01)
