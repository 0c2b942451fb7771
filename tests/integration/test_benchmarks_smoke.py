"""`python -m benchmarks --quick` runs every benchmark end to end.

A smoke test of the command, not of the speed: timings on a shared machine
say nothing, so none is asserted; only that every benchmark ran and reported
its figures.
"""

from __future__ import annotations

import subprocess

import pytest
from support import BASE_ENV, PYTHON, REPO

pytestmark = pytest.mark.slow

BENCHMARKS = ("supervisor", "restore", "final", "scaling", "steady", "memory", "goodput")


def test_quick_run_reports_every_benchmark(tmp_path):
    output = tmp_path / "RESULTS.md"
    result = subprocess.run(
        [PYTHON, "-m", "benchmarks", "--quick", "--only", *BENCHMARKS, "--output", str(output)],
        capture_output=True,
        text=True,
        env=BASE_ENV,
        cwd=REPO,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = output.read_text()
    for heading in (
        "## Machine",
        "## Results",
        "## Scaling with the state's size",
        "## How each figure is measured",
    ):
        assert heading in text
    for fact in ("**CPU**", "**memory**", "**disk**", "**versions**", "**ftharness**", "**load**"):
        assert fact in text
    table = [line for line in text.splitlines() if line.startswith("| ")]
    benchmarks_reported = {line.split(" | ")[0].removeprefix("| ") for line in table[1:]}
    assert benchmarks_reported >= {
        "supervisor",
        "restore",
        "final checkpoint",
        "scaling",
        "steady state",
        "memory",
        "goodput",
    }
    assert "failed to run" not in text
    # Every figure of the final checkpoint and the scaling carries its spread over rounds.
    for line in table[1:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells[0] in ("final checkpoint", "scaling"):
            assert cells[3] != "—", line
    # The three cases of the final checkpoint, as the user sees them.
    for case in ("never checkpointed before", "after a periodic save", "during a periodic write"):
        assert case in text
    assert "figure (ours / baseline)" in result.stdout  # the table was printed
