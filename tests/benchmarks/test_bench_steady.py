"""The steady-state benchmark's arithmetic, on step times made up to known answers.

The benchmark itself runs in tests/integration/test_benchmarks_smoke.py;
here only what it computes from the steps it records.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.bench_steady import Fit, fit_of_record

EVERY, INTERVALS = 10, 2


def segment(config: str, cpu_per_step: list[float], checkpoint_ends=None) -> dict:
    """A fit()'s record: a step of 1 s wall starts every second."""
    wall = np.arange(len(cpu_per_step) + 1, dtype=float)
    cpu = np.concatenate([[0.0], np.cumsum(cpu_per_step)])
    return {
        "config": config,
        "marks": list(zip(wall.tolist(), cpu.tolist(), strict=True)),
        "checkpoint_ends": checkpoint_ends or [],
    }


def interval(write_steps: int) -> list[float]:
    """0.1 s of CPU a step, 0.15 while a write runs, 0.12 for the next snapshot's step."""
    return [0.15] * write_steps + [0.1] * (EVERY - write_steps - 1) + [0.12]


def test_busy_steps_are_those_begun_before_the_commit():
    # Interval k begins at wall second 10 k; its write commits 2.5 s in (3
    # steps began before), the next one 0.5 s in (1 step).
    record = segment("ftharness", interval(3) + interval(1), checkpoint_ends=[2.5, 10.5, 30.0])
    assert fit_of_record(record, EVERY, INTERVALS).busy_steps == [3, 1]


def test_within_interval_ratio_is_the_untouched_rate_over_the_actual():
    record = segment("ftharness", interval(2) * INTERVALS, checkpoint_ends=[1.5, 11.5, 30.0])
    fit = fit_of_record(record, EVERY, INTERVALS)
    actual = sum(interval(2))
    assert fit.within("cpu") == pytest.approx(EVERY * 0.1 / actual)
    assert fit.within("wall") == pytest.approx(1.0)  # every step took 1 s of wall time
    # The callback's own cost per step is taken off the untouched rate.
    assert fit.within("cpu", per_step_cost=0.01) == pytest.approx(EVERY * 0.09 / actual)


def test_the_control_on_steady_steps_reads_one():
    record = segment("none", [0.1] * (EVERY * INTERVALS))
    none = fit_of_record(record, EVERY, INTERVALS)
    control = Fit(none.wall, none.cpu, busy_steps=[3, 2])
    assert control.within("cpu") == pytest.approx(1.0)


def test_a_slow_write_fails_the_estimate_rather_than_flattering_it():
    # A write still running at the interval's last step leaves no untouched step.
    record = segment("ftharness", interval(2) * INTERVALS, checkpoint_ends=[9.5, 11.5, 30.0])
    with pytest.raises(RuntimeError, match="a write lasted a whole interval"):
        fit_of_record(record, EVERY, INTERVALS)


@pytest.mark.parametrize(
    ("config", "steps", "ends", "message"),
    [
        ("none", EVERY * INTERVALS - 1, [], "step marks"),
        ("ftharness", EVERY * INTERVALS, [1.5, 11.5], "checkpoints in the fit"),
    ],
)
def test_a_record_of_the_wrong_shape_is_refused(config, steps, ends, message):
    with pytest.raises(RuntimeError, match=message):
        fit_of_record(segment(config, [0.1] * steps, ends), EVERY, INTERVALS)
