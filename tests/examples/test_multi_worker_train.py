"""examples/multi_worker_train.py as its docstring runs it: two workers on
127.0.0.1, each under its own `ftharness supervise`, one `file://` backup.

Uninterrupted, the two workers end with the same weights; stopped by
SIGTERM after the group's first checkpoint and launched again, the group
resumes and ends with the weights of the uninterrupted run.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "multi_worker_train.py"
ARGS = ["--local-group", "2", "--steps", "30", "--save-freq", "5"]
RESULT = re.compile(r"^RESULT: 2 workers, identical weights at step 30\ndigest (\w+)$", re.M)
# A checkpoint, as the worker or the supervisor reports it.
COMMITTED = re.compile(r"checkpoint ckpt-0*\d+ committed|checkpoint committed at step \d+")

pytestmark = pytest.mark.slow


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def launch(run_dir: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(EXAMPLE), *ARGS, "--run-dir", str(run_dir), *extra],
        cwd=REPO,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(launcher: subprocess.Popen[str]) -> tuple[int, str]:
    output, _ = launcher.communicate(timeout=900)
    return launcher.returncode, output


def digest(output: str) -> str:
    found = RESULT.search(output)
    assert found, output
    return found.group(1)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> str:
    code, output = finish(launch(tmp_path_factory.mktemp("uninterrupted")))
    assert code == 0, output
    return digest(output)


def test_two_workers_end_with_the_same_weights(uninterrupted: str) -> None:
    assert len(uninterrupted) == 64


def test_a_stopped_group_resumes_to_the_same_weights(uninterrupted: str, tmp_path: Path) -> None:
    launcher = launch(tmp_path, "--step-sleep", "0.3")
    chief_log = tmp_path / "worker-0.log"
    deadline = time.monotonic() + 600  # generous: a bound, not a measurement
    while not (chief_log.exists() and COMMITTED.search(chief_log.read_text(errors="replace"))):
        assert launcher.poll() is None, launcher.communicate()[0]
        assert time.monotonic() < deadline, "no checkpoint committed"
        time.sleep(0.5)
    launcher.send_signal(signal.SIGTERM)  # the launcher stops every supervisor
    code, output = finish(launcher)
    assert code == 128 + signal.SIGTERM, output
    code, output = finish(launch(tmp_path))
    assert code == 0, output
    assert digest(output) == uninterrupted
