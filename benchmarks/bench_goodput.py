"""Goodput: a supervised job preempted every N seconds still finishes on time.

The same job runs twice under `ftharness supervise`, with periodic
checkpoints every `save_interval` seconds of training:
- uninterrupted: wall time U from launch to exit 0;
- preempted: every `preempt_every` seconds after a launch (once training
  has started) the supervisor gets SIGTERM, exits 143, and is launched again
  at once, until the job exits 0; wall time T from the first launch.
Each attempt records when it was ready to train (after TensorFlow's start,
the model's build and the restore); launch → ready is that restart's
"process start + restore" (S). (On a loaded machine, an attempt trains at least `min_training`
seconds before its SIGTERM.) The target: T <= (U + sum of S) x 1.05, i.e.
what preemption costs beyond restarting is at most 5 %: the final
checkpoints, the processes' exits, the partial steps lost.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from benchmarks.context import Context, tail, wait, wait_for_path
from benchmarks.measure import Row, format_ratio, seconds
from benchmarks.settings import Settings

NAME = "goodput"


def run(ctx: Context) -> list[Row]:
    calibration = ctx.calibration()
    step = calibration["step_seconds"]
    total_steps = max(20, round(ctx.settings.goodput_seconds / step / 20) * 20)
    save_freq = max(2, round(ctx.settings.save_interval / step))

    uninterrupted = _job(ctx, "goodput-uninterrupted", total_steps, save_freq, preempt=None)
    preempted = _job(
        ctx, "goodput-preempted", total_steps, save_freq, preempt=ctx.settings.preempt_every
    )
    restarts = len(preempted["attempts"]) - 1
    start_restore = [a["ready"] - a["launched"] for a in preempted["attempts"][1:]]
    budget = uninterrupted["wall"] + sum(start_restore)
    ratio = preempted["wall"] / budget
    lost = (preempted["wall"] - budget) / restarts if restarts else 0.0
    mean_sr = sum(start_restore) / restarts if restarts else 0.0
    print(
        f"  goodput: {format_ratio(ratio)} ({seconds(preempted['wall'])} preempted, "
        f"{seconds(uninterrupted['wall'])} uninterrupted, {restarts} restarts)"
    )
    return [
        Row(
            NAME,
            "preempted run / (uninterrupted + restarts x (start + restore))",
            ratio,
            seconds(preempted["wall"]),
            f"{seconds(uninterrupted['wall'])} + {restarts} x {seconds(mean_sr)}",
            "≤ 1.05",
            ratio <= 1.05,
            f"{total_steps} steps, a checkpoint every {save_freq}, SIGTERM every "
            f"{ctx.settings.preempt_every:.0f} s; beyond restarting, each preemption cost "
            f"{seconds(lost)} (final checkpoint, exit, the interrupted step); one pair of "
            "runs (each takes minutes)",
        )
    ]


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
    first = time.time()
    while True:
        ready.unlink(missing_ok=True)
        launches.append(time.time())
        log = directory / f"attempt-{len(launches)}.log"
        process = ctx.start(command, log)
        if preempt is not None and len(launches) > ctx.settings.max_preemptions:
            preempt = None  # enough: let this attempt finish the job
        code = _run_attempt(process, (ready, done), launches[-1], preempt, ctx.settings)
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
    return {"wall": wall, "attempts": attempts}


def _run_attempt(
    process: subprocess.Popen,
    markers: tuple[Path, Path],
    launched: float,
    preempt: float | None,
    settings: Settings,
) -> int:
    if preempt is None:
        return wait(process, 3600)
    ready, done = markers
    # SIGTERM `preempt` seconds after the launch, but only once the attempt
    # has trained `min_training` seconds (on a loaded machine TensorFlow's
    # start alone can take most of the period, and a job that never trains
    # never ends), and never once training is over: a job stopped while it
    # exits would redo its last steps, a cost of the schedule, not of ours.
    wait_for_path(ready, 600, process)
    signal_at = max(launched + preempt, ready.stat().st_mtime + settings.min_training)
    try:
        return process.wait(max(0.0, signal_at - time.time()))
    except subprocess.TimeoutExpired:
        if not done.exists():
            process.send_signal(signal.SIGTERM)
        return wait(process, 600)
