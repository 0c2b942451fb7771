"""Two real worker processes of a MultiWorkerMirroredStrategy group on 127.0.0.1.

Each worker (tests/workers/multi_worker_loop.py) runs alone, without a
supervisor, with its own local checkpoint directory `local-<id>` (as two
machines would have), TF_CONFIG on free ports, and FTHARNESS_PEER_TIMEOUT=3
so that a lost peer is noticed within seconds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from support import BASE_ENV, PYTHON, REPO, WORKERS, wait_for

WORKER = WORKERS / "multi_worker_loop.py"
STEPS = 24
SAVE_FREQ = 5
SLEEP = 0.15  # per step: room to signal a worker mid-run
PEER_TIMEOUT = "3"
PEER_LOST = 76
PEER_STOPPED = 79
PREEMPTED = 143
# Generous bounds: the machine is shared and each worker imports TensorFlow.
START_TIMEOUT = 180
RUN_TIMEOUT = 300


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(ports: list[int], index: int) -> str:
    workers = [f"127.0.0.1:{port}" for port in ports]
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


class Group:
    """The workers of one launch; `directory` keeps the local dirs across launches."""

    def __init__(
        self,
        directory: Path,
        *,
        workers: tuple[int, ...] = (0, 1),
        count: int = 2,
        env: dict | None = None,
        sleep: float = SLEEP,
    ) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        ports = free_ports(count)
        self.processes: dict[int, subprocess.Popen] = {}
        self._logs = {}
        for index in workers:
            log = open(self.log_path(index), "ab")  # noqa: SIM115 -- closed in wait()
            self._logs[index] = log
            self.processes[index] = subprocess.Popen(
                [
                    PYTHON,
                    str(WORKER),
                    "--backup-dir",
                    str(self.local_dir(index)),
                    "--steps",
                    str(STEPS),
                    "--save-freq",
                    str(SAVE_FREQ),
                    "--sleep",
                    str(sleep),
                    "--report",
                    str(self.report_path(index)),
                    "--step-log",
                    str(self.step_log(index)),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={
                    **BASE_ENV,
                    "TF_CONFIG": tf_config(ports, index),
                    "FTHARNESS_PEER_TIMEOUT": PEER_TIMEOUT,
                    **(env or {}),
                },
                cwd=REPO,
            )

    def local_dir(self, index: int) -> Path:
        return self.directory / f"local-{index}"

    def report_path(self, index: int) -> Path:
        return self.directory / f"report-{index}.json"

    def step_log(self, index: int) -> Path:
        return self.directory / f"steps-{index}"

    def log_path(self, index: int) -> Path:
        return self.directory / f"worker-{index}.log"

    def log(self, index: int) -> str:
        return self.log_path(index).read_text(errors="replace")

    def steps(self, index: int) -> list[int]:
        path = self.step_log(index)
        return [int(line) for line in path.read_text().split()] if path.exists() else []

    def wait_for_step(self, step: int, index: int = 1) -> None:
        wait_for(
            lambda: (self.steps(index) or [0])[-1] >= step,
            START_TIMEOUT,
            f"worker {index} to reach step {step}",
        )

    def signal(self, index: int, signum: int) -> float:
        os.kill(self.processes[index].pid, signum)
        return time.monotonic()

    def wait(self, timeout: float = RUN_TIMEOUT) -> dict[int, int]:
        try:
            return {index: p.wait(timeout) for index, p in self.processes.items()}
        finally:
            for process in self.processes.values():
                if process.poll() is None:
                    process.kill()
                    process.wait()
            for log in self._logs.values():
                log.close()

    def reports(self) -> dict[int, dict]:
        return {i: json.loads(self.report_path(i).read_text()) for i in self.processes}

    def committed_steps(self, index: int) -> list[int]:
        return sorted(
            int(path.parent.name.removeprefix("ckpt-"))
            for path in self.local_dir(index).glob("ckpt-*/manifest.json")
        )


def same_training(reference: dict, resumed: dict) -> list[str]:
    """Keys of the final state that differ (empty: bit-identical)."""
    return [
        key
        for key in ("steps", "weights", "optimizer", "next_numpy")
        if reference[key] != resumed[key]
    ]


def stop(group: Group, index: int, signum: int, at_step: int) -> float:
    """Signal worker `index` once it passed `at_step`; returns the time of the signal."""
    group.wait_for_step(at_step, index)
    return group.signal(index, signum)


SIGTERM = signal.SIGTERM
SIGKILL = signal.SIGKILL
