"""Steady-state cost of periodic checkpoints: training throughput.

One worker process trains the model in rounds of one fit() per contender:
no checkpoints; ftharness (background writes, the default); Keras's
BackupAndRestore (for context), the order rotated from round to round. Each
fit() checkpoints every `save_interval` seconds of training (a number of
steps calibrated from the step time) and records the wall and CPU time (the
process's, all its threads) at every step over whole intervals only: from
just after its first checkpoint to just after its last. What a training job
pays once, not per checkpoint (the fit()'s start, the first snapshot's
buffers, removing the backup at the end), stays outside; every stall and
every background write of the intervals timed is inside.

Two estimates of the same ratio, training throughput with checkpoints /
without:
- Within each interval (the target's figure): the interval's steps against
  the same interval's steps that no checkpoint touched (those that began
  after the interval's write was committed, less the last, whose end takes
  the next snapshot), scaled to the interval's length, each less what
  ftharness's callback costs every step. That cost, which the untouched
  steps carry too, does not depend on the model and is measured on its own
  on a tiny model, whose step it is a large part of (fit()s without / with
  the callback checkpointing nothing, interleaved). Both sides are the
  same seconds of the same fit(), so the host's load, which moves the CPU
  time per step of consecutive 10 s intervals by ±10 % here, moves both
  alike. The same computation on the fits without checkpoints, leaving out
  as many leading steps as ftharness's write took in the same round, is the
  control: it must read 1 (± 0.01), or the estimate is not trusted and the
  target is not met.
- Between fit()s (context): CPU time per step of the fits without
  checkpoints / with, per round. Every effect a checkpoint could have is in
  it, but so is the host's load, fit() by fit().
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchmarks.context import Context
from benchmarks.measure import Row, format_ratio, median, spread

NAME = "steady state"
CONFIGS = ("none", "ftharness", "keras")
TARGET = 0.98
CONTROL_TOLERANCE = 0.01


@dataclass(frozen=True)
class Fit:
    """One fit()'s timed steps: wall and CPU seconds of each, interval by interval."""

    wall: np.ndarray  # (intervals, steps per interval)
    cpu: np.ndarray
    busy_steps: list[int]  # leading steps of each interval a checkpoint's work touched

    def within(self, kind: str, per_step_cost: float = 0.0) -> float:
        """Throughput of the intervals / that of their untouched steps ("wall" or "cpu"),
        those less `per_step_cost` (seconds): what the callback costs every step."""
        steps = getattr(self, kind)
        untouched = sum(
            (row[skip:-1].mean() - per_step_cost) * len(row)
            for row, skip in zip(steps, self.busy_steps, strict=True)
        )
        return float(untouched / steps.sum())

    def cpu_per_step(self) -> float:
        return float(self.cpu.mean())


def run(ctx: Context) -> list[Row]:
    result = ctx.run_worker(
        "steady", "--work", ctx.fresh_dir("steady"), "--configs", ",".join(CONFIGS), timeout=3600
    )
    ctx.remember_step(result["step_seconds"], result["state_bytes"])
    every, intervals = result["save_every"], result["intervals"]
    fits: dict[int, dict[str, Fit]] = {}
    for segment in result["segments"]:
        fits.setdefault(segment["round"], {})[segment["config"]] = fit_of_record(
            segment, every, intervals
        )
    rounds = list(fits.values())
    for fits_of_round in rounds:  # the control skips what ftharness's writes did
        none = fits_of_round["none"]
        fits_of_round["control"] = Fit(none.wall, none.cpu, fits_of_round["ftharness"].busy_steps)

    overhead = result["per_step_overhead"]
    # Never below 0: a negative median is noise and would flatter the figure.
    per_step_cost = max(
        0.0, median([a - b for a, b in zip(overhead["ftharness"], overhead["none"], strict=True)])
    )
    within = {
        "ftharness": [r["ftharness"].within("cpu", per_step_cost) for r in rounds],
        "keras": [r["keras"].within("cpu") for r in rounds],
        "control": [r["control"].within("cpu") for r in rounds],
    }
    within_wall = {
        config: [r[config].within("wall") for r in rounds] for config in ("ftharness", "keras")
    }
    between = {
        config: [r["none"].cpu_per_step() / r[config].cpu_per_step() for r in rounds]
        for config in ("ftharness", "keras")
    }
    none_cpu = [r["none"].cpu_per_step() for r in rounds]
    control = median(within["control"])
    control_holds = abs(control - 1) <= CONTROL_TOLERANCE
    ours = median(within["ftharness"])
    busy = [skip for r in rounds for skip in r["ftharness"].busy_steps]
    detail = (
        f"a checkpoint every {every} steps (~{every * result['step_seconds']:.1f} s; "
        f"step {result['step_seconds'] * 1000:.1f} ms), {intervals} intervals timed per fit(), "
        f"{len(rounds)} rounds"
    )

    def cpu_seconds(config: str) -> str:
        return f"{median([r[config].cpu_per_step() for r in rounds]) * 1000:.1f} ms CPU/step"

    rows = [
        Row(
            NAME,
            "training throughput per CPU second with ftharness (background writes) / "
            "its untouched steps, within each interval",
            ours,
            cpu_seconds("ftharness"),
            "the same intervals",
            f"≥ {TARGET}",
            ours >= TARGET and control_holds,
            f"{detail}; the callback's own cost per step ({per_step_cost * 1e6:.0f} µs, "
            "measured on a tiny model, below) charged on top; "
            f"a checkpoint's write touched the first {min(busy)}-{max(busy)} steps "
            f"of an interval; by wall time {format_ratio(median(within_wall['ftharness']))} "
            f"(spread {spread(within_wall['ftharness'])}); the control reads "
            f"{format_ratio(control)}"
            + ("" if control_holds else ", outside 1 ± 0.01: this run's estimate is not trusted"),
            spread(within["ftharness"]),
        ),
        Row(
            NAME,
            "control: the same estimate on the fits without checkpoints (must be 1)",
            control,
            cpu_seconds("none"),
            "the same intervals",
            f"1 ± {CONTROL_TOLERANCE}",
            control_holds,
            "leaving out as many leading steps of each interval as ftharness's write "
            "touched in the same round",
            spread(within["control"]),
        ),
        Row(
            NAME,
            "CPU time per step of a tiny model without / with ftharness's callback "
            "(save_freq=False)",
            median(overhead["none"]) / median(overhead["ftharness"]),
            f"{median(overhead['ftharness']) * 1e6:.0f} µs CPU/step",
            f"{median(overhead['none']) * 1e6:.0f} µs CPU/step",
            note=f"the callback's cost every step (batch hooks, the train function's wrapper), "
            f"independent of the model: {per_step_cost * 1e6:.0f} µs, the median of "
            f"{len(overhead['none'])} interleaved pairs of fit()s",
            spread=spread(
                [a / b for a, b in zip(overhead["none"], overhead["ftharness"], strict=True)]
            ),
        ),
        Row(
            NAME,
            "CPU time per step without checkpoints / with ftharness, between fit()s",
            median(between["ftharness"]),
            cpu_seconds("ftharness"),
            cpu_seconds("none"),
            note="every effect of a checkpoint is in it, and so is the host's load, "
            "fit() by fit(): the fits without checkpoints alone took "
            f"{min(none_cpu) * 1000:.1f}-{max(none_cpu) * 1000:.1f} ms CPU/step",
            spread=spread(between["ftharness"]),
        ),
        Row(
            NAME,
            "training throughput per CPU second with Keras BackupAndRestore / "
            "its untouched steps, within each interval",
            median(within["keras"]),
            cpu_seconds("keras"),
            "the same intervals",
            note="its callback's own cost per step not charged (not measured); "
            f"between fit()s: {format_ratio(median(between['keras']))} "
            f"(spread {spread(between['keras'])}); by wall time within each interval "
            f"{format_ratio(median(within_wall['keras']))}",
            spread=spread(within["keras"]),
        ),
    ]
    print(
        f"  ftharness: {format_ratio(ours)} of the throughput per CPU second of its untouched "
        f"steps (control {format_ratio(control)}); between fit()s "
        f"{format_ratio(median(between['ftharness']))}"
    )
    return rows


def fit_of_record(segment: dict, every: int, intervals: int) -> Fit:
    """One fit()'s record from the worker, checked and cut into its intervals."""
    config, marks = segment["config"], np.array(segment["marks"], dtype=float)
    if len(marks) != every * intervals + 1:
        raise RuntimeError(f"{config}: {len(marks)} step marks, not {every * intervals + 1}")
    begins = marks[:-1, 0].reshape(intervals, every)
    wall = np.diff(marks[:, 0]).reshape(intervals, every)
    cpu = np.diff(marks[:, 1]).reshape(intervals, every)
    ends = segment["checkpoint_ends"]
    if config == "none":
        return Fit(wall, cpu, [0] * intervals)
    # One checkpoint before the window, one at the end of each interval.
    if len(ends) != intervals + 1:
        raise RuntimeError(f"{config}: {len(ends)} checkpoints in the fit(), not {intervals + 1}")
    # The steps of interval k that began before the write taken at its start
    # was committed (ends[k]) were touched by it.
    busy = [int(np.sum(begins[k] < ends[k])) for k in range(intervals)]
    if any(skip >= every - 1 for skip in busy):
        raise RuntimeError(f"{config}: a write lasted a whole interval: {busy}")
    return Fit(wall, cpu, busy)
