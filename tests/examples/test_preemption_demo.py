"""The README's first command, as a person sees it.

`python examples/preemption_demo.py` is the first thing a newcomer runs: its
output must read as a story (one line per event, no TensorFlow C++ start-up
notices) that fits a screen and ends with its verdict.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# A terminal's worth of lines.
SCREEN_LINES = 40

# What TensorFlow's C++ runtime prints at start-up: absl's preamble, and lines
# in absl's format (severity letter, date, time, thread id, source file).
CXX_NOISE = re.compile(
    r"absl::InitializeLog|oneDNN custom operations|^[IWEF]\d{4} [\d:.]+ +\d+ \S+\.cc:"
)

# One checkpoint, as the worker and the supervisor each name it.
CHECKPOINT_EVENT = re.compile(
    r"checkpoint ckpt-0*(?P<worker>\d+) committed|checkpoint committed at step (?P<supervisor>\d+)"
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ)
    # A person's shell sets none of these: the demo must be quiet on its own.
    for name in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS", "FTHARNESS_LOG_LEVEL"):
        environment.pop(name, None)
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO), environment.get("PYTHONPATH")])
    )
    return subprocess.run(
        [
            sys.executable,
            str(REPO / "examples" / "preemption_demo.py"),
            "--workdir",
            str(tmp_path_factory.mktemp("demo")),
        ],
        cwd=REPO,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # interleaved, as on a terminal
        text=True,
        timeout=900,
    )


def lines(demo: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in demo.stdout.splitlines() if line.strip()]


@pytest.mark.slow
def test_demo_succeeds_and_ends_with_its_result(
    demo: subprocess.CompletedProcess[str],
) -> None:
    assert demo.returncode == 0, demo.stdout
    assert lines(demo)[-1] == "RESULT: bit-identical", demo.stdout


@pytest.mark.slow
def test_demo_prints_no_tensorflow_start_up_noise(
    demo: subprocess.CompletedProcess[str],
) -> None:
    noise = [line for line in lines(demo) if CXX_NOISE.search(line)]
    assert not noise, "\n".join(noise)


@pytest.mark.slow
def test_demo_prints_each_checkpoint_once(demo: subprocess.CompletedProcess[str]) -> None:
    steps = Counter(
        int(match["worker"] or match["supervisor"])
        for line in lines(demo)
        if (match := CHECKPOINT_EVENT.search(line))
    )
    assert steps, demo.stdout  # the checkpoints are reported at all
    repeated = {step: count for step, count in steps.items() if count > 1}
    assert not repeated, f"steps reported more than once: {repeated}\n{demo.stdout}"


@pytest.mark.slow
def test_demo_output_fits_a_screen(demo: subprocess.CompletedProcess[str]) -> None:
    assert len(lines(demo)) <= SCREEN_LINES, demo.stdout
