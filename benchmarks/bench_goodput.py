"""Goodput: a supervised job preempted every N seconds still finishes on time.

The same job runs in pairs of runs under `ftharness supervise`, with periodic
checkpoints every `save_interval` seconds of training:
- uninterrupted: wall time U from launch to exit 0;
- preempted: every `preempt_every` seconds after a launch (once training
  has started) the supervisor gets SIGTERM, exits 143, and is launched again
  at once, until the job exits 0; wall time T from the first launch.
Each restart's "process start + restore" (S) is launch → the end of its
first training step, less one step's time (the attempt's own median step):
Python's and TensorFlow's start, the model's build, the restore, and the
trace of the train function that TensorFlow does in the first step of every
new process (about 1.2 s here, and the same with or without ftharness). The
target: T <= (U + sum of S) x 1.05, i.e. what preemption costs beyond
restarting is at most 5 %: the final checkpoints, the processes' exits, the
partial steps lost. A second figure (context) counts S only to the first
step's start, charging the trace to preemption. (On a loaded machine, an
attempt trains at least `min_training` seconds before its SIGTERM.) The
figure is the median over `goodput_pairs` pairs, the order within a pair
alternating.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import time
from pathlib import Path

from benchmarks.context import Context, tail, wait, wait_for_path
from benchmarks.measure import Row, format_ratio, median, seconds, spread
from benchmarks.settings import Settings

NAME = "goodput"


def run(ctx: Context) -> list[Row]:
    calibration = ctx.calibration()
    step = calibration["step_seconds"]
    total_steps = max(20, round(ctx.settings.goodput_seconds / step / 20) * 20)
    save_freq = max(2, round(ctx.settings.save_interval / step))
    pairs = []
    for index in range(ctx.settings.goodput_pairs):
        # Alternate which run of a pair goes first, so that a drift of the
        # machine's load does not always land on the same one.
        jobs = {}
        for kind in ("uninterrupted", "preempted")[:: 1 if index % 2 == 0 else -1]:
            preempt = ctx.settings.preempt_every if kind == "preempted" else None
            jobs[kind] = _job(ctx, f"goodput-{kind}", total_steps, save_freq, preempt=preempt)
        uninterrupted, preempted = jobs["uninterrupted"], jobs["preempted"]
        restarts = preempted["attempts"][1:]
        start_restore = [_start_restore(a, step) for a in restarts]
        until_first_step = [a["ready"] - a["launched"] for a in restarts]
        budget = uninterrupted["wall"] + sum(start_restore)
        count = len(restarts) or 1
        pairs.append(
            {
                "ratio": preempted["wall"] / budget,
                "ratio_trace_charged": preempted["wall"]
                / (uninterrupted["wall"] + sum(until_first_step)),
                "wall": preempted["wall"],
                "uninterrupted": uninterrupted["wall"],
                "restarts": len(restarts),
                "start_restore": sum(start_restore) / count,
                "until_first_step": sum(until_first_step) / count,
                "lost": (preempted["wall"] - budget) / count,
                "stop": median(preempted["stops"]) if preempted["stops"] else 0.0,
            }
        )
        print(
            f"  goodput pair {index + 1}: {format_ratio(pairs[-1]['ratio'])} "
            f"({seconds(preempted['wall'])} preempted, {seconds(uninterrupted['wall'])} "
            f"uninterrupted, {len(restarts)} restarts; "
            f"{format_ratio(pairs[-1]['ratio_trace_charged'])} with the trace charged)"
        )
    ratio = median([p["ratio"] for p in pairs])
    charged = median([p["ratio_trace_charged"] for p in pairs])
    schedule = (
        f"{total_steps} steps, a checkpoint every {save_freq}, SIGTERM every "
        f"{ctx.settings.preempt_every:.0f} s; median of {len(pairs)} pairs of runs"
    )
    return [
        Row(
            NAME,
            "preempted run / (uninterrupted + restarts x (start + restore))",
            ratio,
            seconds(median([p["wall"] for p in pairs])),
            f"{seconds(median([p['uninterrupted'] for p in pairs]))} + "
            f"{median([p['restarts'] for p in pairs]):.0f} x "
            f"{seconds(median([p['start_restore'] for p in pairs]))}",
            "≤ 1.05",
            ratio <= 1.05,
            f"{schedule}; start + restore is launch → the end of the first step, less a "
            "step; beyond restarting, each preemption cost "
            f"{seconds(median([p['lost'] for p in pairs]))} (SIGTERM → the supervisor's exit "
            f"{seconds(median([p['stop'] for p in pairs]))}: the step in progress, the final "
            "checkpoint, the exits; then the relaunch)",
            spread([p["ratio"] for p in pairs]),
        ),
        Row(
            NAME,
            "preempted run / (uninterrupted + restarts x (start + restore up to the first "
            "step's start))",
            charged,
            seconds(median([p["wall"] for p in pairs])),
            f"{seconds(median([p['uninterrupted'] for p in pairs]))} + "
            f"{median([p['restarts'] for p in pairs]):.0f} x "
            f"{seconds(median([p['until_first_step'] for p in pairs]))}",
            "—",
            None,
            f"{schedule}; the first step's trace in each new process "
            f"({seconds(median([p['start_restore'] - p['until_first_step'] for p in pairs]))} "
            "beyond a step) charged to "
            "preemption",
            spread([p["ratio_trace_charged"] for p in pairs]),
        ),
    ]


def _start_restore(attempt: dict, calibrated_step: float) -> float:
    """Launch → the end of the first step, less one step (the attempt's own
    median; the calibration's if the attempt trained too few steps for one)."""
    ends = attempt["step_ends"]
    gaps = [later - earlier for earlier, later in itertools.pairwise(ends[1:])]
    step = median(gaps) if gaps else calibrated_step  # the first gap may hold a retrace
    return ends[0] - attempt["launched"] - step


def _job(ctx: Context, name: str, total_steps: int, save_freq: int, preempt: float | None):
    directory = ctx.fresh_dir(name)
    timeline, ready, done = (directory / n for n in ("timeline.jsonl", "ready", "done"))
    command = ctx.ftharness_command(
        "supervise",
        "--backup-dir",
        directory / "b",
        "--",
        *ctx.worker_command(
            "goodput",
            "--total-steps",
            total_steps,
            "--save-freq",
            save_freq,
            "--timeline",
            timeline,
            "--ready",
            ready,
            "--done",
            done,
        ),
    )
    launches: list[float] = []
    stops: list[float] = []  # SIGTERM → the supervisor's exit, per preemption
    first = time.time()
    while True:
        ready.unlink(missing_ok=True)
        launches.append(time.time())
        log = directory / f"attempt-{len(launches)}.log"
        process = ctx.start(command, log)
        if preempt is not None and len(launches) > ctx.settings.max_preemptions:
            preempt = None  # enough: let this attempt finish the job
        code = _run_attempt(process, (ready, done), launches[-1], preempt, ctx.settings, stops)
        if code == 0:
            break
        if code != 128 + signal.SIGTERM or preempt is None:
            raise RuntimeError(f"{name}: the supervisor exited {code}:\n{tail(log)}")
    wall = time.time() - first
    records = [json.loads(line) for line in timeline.read_text().splitlines()]
    if len(records) != len(launches):
        raise RuntimeError(f"{name}: {len(launches)} launches but {len(records)} records")
    if records[-1]["iterations"] != total_steps:
        raise RuntimeError(f"{name}: ended at step {records[-1]['iterations']}, not {total_steps}")
    attempts = [
        {"launched": launched, **record} for launched, record in zip(launches, records, strict=True)
    ]
    return {"wall": wall, "attempts": attempts, "stops": stops}


def _run_attempt(
    process: subprocess.Popen,
    markers: tuple[Path, Path],
    launched: float,
    preempt: float | None,
    settings: Settings,
    stops: list[float],
) -> int:
    if preempt is None:
        return wait(process, 3600)
    ready, done = markers
    # SIGTERM `preempt` seconds after the launch, but only once the attempt
    # has trained `min_training` seconds (on a loaded machine TensorFlow's
    # start alone can take most of the period, and a job that never trains
    # never ends), and never once training is over: a job stopped while it
    # exits would redo its last steps, a cost of the schedule, not of ours.
    try:
        wait_for_path(ready, 600, process)
    except RuntimeError:
        if process.returncode == 0:
            # The job's last steps were fewer than the ones before `ready`: it
            # finished before it could be preempted.
            return 0
        raise
    signal_at = max(launched + preempt, ready.stat().st_mtime + settings.min_training)
    try:
        return process.wait(max(0.0, signal_at - time.time()))
    except subprocess.TimeoutExpired:
        if done.exists():
            return wait(process, 600)
        signalled = time.time()
        process.send_signal(signal.SIGTERM)
        code = wait(process, 600)
        stops.append(time.time() - signalled)
        return code
