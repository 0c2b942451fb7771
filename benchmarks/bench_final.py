"""Final checkpoint latency: SIGTERM to a committed checkpoint on disk.

A worker process trains the model under `ftharness.keras.BackupAndRestore`
(standalone: the supervisor only forwards the signal). We send it SIGTERM at
a random moment of a training step and poll its directory every millisecond
for the new `ckpt-*` entry: the rename that commits it. Side by side, in the
same rounds:
- raw: the same number of bytes, already in memory, written to a new file in
  the same directory with one `write()` and one `fsync()`;
- Keras: `keras.callbacks.BackupAndRestore` saving the same model in a
  worker (its `_save_model`, timed; pending writeback flushed before each);
- in flight (context): SIGTERM the moment a periodic background write has
  started, so the final checkpoint first waits for it (the worst case).
"""

from __future__ import annotations

import os
import random
import re
import signal
import time
from pathlib import Path

import numpy as np

from benchmarks.context import Context, tail, wait, wait_for_path
from benchmarks.measure import Row, format_ratio, interleaved, median, seconds
from ftharness.checkpoint.manifest import step_of

NAME = "final checkpoint"
_COMMITTED = re.compile(
    r"checkpoint ckpt-(\d+) committed .*training stalled ([\d.]+) s, written in ([\d.]+) s"
)


def run(ctx: Context) -> list[Row]:
    size = ctx.settings.state_bytes
    data = memoryview(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8))
    details: dict[str, list[dict]] = {"ftharness": [], "in_flight": []}

    def raw() -> float:
        return raw_write_fsync(ctx.fresh_dir("raw") / "arrays.bin", data)

    def ours() -> float:
        latency, facts = sigterm_to_commit(ctx, in_flight=False)
        details["ftharness"].append(facts)
        return latency

    def in_flight() -> float:
        latency, facts = sigterm_to_commit(ctx, in_flight=True)
        details["in_flight"].append(facts)
        return latency

    def keras_save() -> float:
        saves = ctx.run_worker("keras-save", "--backup-dir", ctx.fresh_dir("keras"), "--saves", 3)
        return median(saves["save_seconds"])

    results = interleaved(
        {"raw": raw, "ftharness": ours, "keras": keras_save, "in_flight": in_flight},
        ctx.settings.repeats,
    )
    raw_s, ours_s = median(results["raw"]), median(results["ftharness"])
    keras_s, in_flight_s = median(results["keras"]), median(results["in_flight"])
    facts = details["ftharness"]
    stall = median([f["stall"] for f in facts])
    write = median([f["write"] for f in facts])
    step = median([f["step"] for f in facts])
    boundary = max(0.0, ours_s - stall - write)
    breakdown = (
        f"median of {len(facts)}: waiting for the step boundary ~{seconds(boundary)} "
        f"(a step is {seconds(step)}), snapshot {seconds(stall)}, "
        f"write + fsync + commit {seconds(write)}"
    )
    size_text = f"{size / 1e6:.0f} MB"
    rows = [
        Row(
            NAME,
            f"SIGTERM → committed, {size_text} / raw write + fsync of the same bytes",
            ours_s / raw_s,
            seconds(ours_s),
            seconds(raw_s),
            "≤ 1.25",
            ours_s / raw_s <= 1.25,
            breakdown,
        ),
        Row(
            NAME,
            "SIGTERM → committed / Keras BackupAndRestore save (no fsync)",
            ours_s / keras_s,
            seconds(ours_s),
            seconds(keras_s),
            "< 1",
            ours_s < keras_s,
            "Keras writes an HDF5 file and does not fsync it: when its save returns "
            "the bytes may still be only in the page cache",
        ),
        Row(
            NAME,
            "step boundary → committed (snapshot + commit) / raw write + fsync",
            (stall + write) / raw_s,
            seconds(stall + write),
            seconds(raw_s),
            note="the part after the interrupted step ends: what the harness controls",
        ),
        Row(
            NAME,
            "commit alone (snapshot in memory → renamed) / raw write + fsync",
            write / raw_s,
            seconds(write),
            seconds(raw_s),
            note="the worker's own timing of the final write: checksums, write, fsync, "
            "manifest, rename, directory fsync",
        ),
        Row(
            NAME,
            "SIGTERM during a periodic background write → final committed / raw",
            in_flight_s / raw_s,
            seconds(in_flight_s),
            seconds(raw_s),
            note="worst case: the final checkpoint first waits for the write in flight "
            "(at most one), then writes the newest state",
        ),
    ]
    for row in rows:
        row_ratio = format_ratio(row.ratio)
        print(f"  {row.figure}: {row_ratio} ({row.ours} vs {row.baseline})", flush=True)
    return rows


def raw_write_fsync(path: Path, data: memoryview) -> float:
    """One write() of bytes already in memory, one fsync(): the disk's floor."""
    os.sync()  # no writeback of earlier measurements pending
    started = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = data
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - started
    path.unlink()
    return elapsed


def sigterm_to_commit(ctx: Context, in_flight: bool) -> tuple[float, dict]:
    directory = ctx.fresh_dir("ftharness-final")
    backup, ready, out, log = (directory / n for n in ("b", "ready", "result.json", "worker.log"))
    # In the in-flight case a periodic save every 8 steps gives us a write to
    # interrupt; otherwise no periodic saves: only the final checkpoint.
    save_freq = 8 if in_flight else 0
    process = ctx.start(
        ctx.worker_command(
            "final",
            "--backup-dir",
            backup,
            "--ready",
            ready,
            "--save-freq",
            save_freq,
            "--out",
            out,
        ),
        log,
    )
    try:
        wait_for_path(ready, 600, process)
        periodic_step = -1
        if in_flight:
            periodic_step = _wait_for_write_start(backup, process)
        else:
            os.sync()
            time.sleep(random.uniform(0.3, 1.0))  # anywhere within a step
        signalled = time.time()
        process.send_signal(signal.SIGTERM)
        committed = _wait_for_commit(backup, periodic_step, process)
        code = wait(process, 120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if code != 128 + signal.SIGTERM:
        raise RuntimeError(f"the worker exited {code}, not 143:\n{tail(log)}")
    final = [m for m in _COMMITTED.finditer(log.read_text()) if int(m.group(1)) >= periodic_step]
    if not final:
        raise RuntimeError(f"no final checkpoint in the worker's log:\n{tail(log)}")
    worker = _read_json(out)
    facts = {
        "stall": float(final[-1].group(2)),
        "write": float(final[-1].group(3)),
        "step": worker.get("step_seconds", float("nan")),
    }
    return committed - signalled, facts


def _wait_for_write_start(backup: Path, process) -> int:
    """Poll until a periodic checkpoint's temporary directory appears; its step."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the worker exited with {process.returncode}")
        for entry in os.scandir(backup):
            if entry.name.startswith(".tmp-ckpt-"):
                return int(entry.name.split("-")[2])
        time.sleep(0.001)
    raise TimeoutError("no periodic checkpoint started")


def _wait_for_commit(backup: Path, after_step: int, process) -> float:
    """When the final checkpoint appeared: the newest one at the worker's exit.

    Polls every millisecond, noting when each committed checkpoint newer than
    `after_step` is first seen. Usually the final checkpoint is newer than the
    periodic one in flight; if the signal came at that very step boundary,
    the one in flight is the final checkpoint (the same state) and its
    commit time counts.
    """
    first_seen: dict[int, float] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        exited = process.poll() is not None
        for entry in os.scandir(backup):
            step = step_of(entry.name)
            if step is not None and step >= after_step and step not in first_seen:
                first_seen[step] = time.time()
        if exited:
            if not first_seen:
                raise RuntimeError(f"the worker exited {process.returncode}, no final checkpoint")
            return first_seen[max(first_seen)]
        time.sleep(0.001)
    raise TimeoutError("the worker did not exit after its final checkpoint")


def _read_json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
