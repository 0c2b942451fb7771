"""Restore: read and verify a checkpoint, against a raw read of the same bytes.

A checkpoint of the model's size is committed with ftharness's store; then,
interleaved, `LocalCheckpointStore.load_latest()` (read every file into
memory, check sizes and CRC-32s against the manifest) and a raw read of the
same files (`readinto` a fresh buffer, nothing checked).

Warm: the files are in the page cache (written just before, read once).
Cold: each file's pages are evicted first with
`posix_fadvise(POSIX_FADV_DONTNEED)`, per file, so other jobs on the machine
keep their cache (dropping all caches works on this machine but would slow
them); on a VM the host may still cache the disk.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from benchmarks.context import Context
from benchmarks.measure import Row, format_ratio, interleaved, median, ratios, seconds, spread
from ftharness.checkpoint.local import LocalCheckpointStore
from ftharness.checkpoint.manifest import WriterInfo

NAME = "restore"


def run(ctx: Context) -> list[Row]:
    size = ctx.settings.state_bytes
    directory = ctx.fresh_dir("restore")
    store = LocalCheckpointStore(directory)
    payload = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)
    ref = store.commit(
        step=1,
        epoch=0,
        batch=1,
        files={"arrays.bin": [memoryview(payload)], "state.json": [b'{"position": {}}']},
        writer=WriterInfo.current("benchmark"),
    )
    del payload
    files = sorted(p for p in ref.path.iterdir() if p.name != "manifest.json")

    def ours() -> float:
        started = time.perf_counter()
        loaded = store.load_latest()
        elapsed = time.perf_counter() - started
        assert loaded is not None and loaded.ref.step == 1
        return elapsed

    def raw() -> float:
        return raw_read(files)

    def cold(measure):
        def measure_cold() -> float:
            for path in [*files, ref.path / "manifest.json"]:
                evict(path)
            return measure()

        return measure_cold

    raw()  # warm the page cache
    rounds = max(5, ctx.settings.repeats)
    warm = interleaved({"ftharness": ours, "raw": raw}, rounds)
    cold_results = interleaved({"ftharness": cold(ours), "raw": cold(raw)}, rounds)
    rows = []
    for label, results, target in (
        ("warm (page cache)", warm, "≤ 1.25"),
        ("cold (evicted per file)", cold_results, ""),
    ):
        ours_s, raw_s = median(results["ftharness"]), median(results["raw"])
        round_ratios = ratios(results["ftharness"], results["raw"])
        ratio = median(round_ratios)
        rows.append(
            Row(
                NAME,
                f"load + verify {size / 1e6:.0f} MB / raw read of the same bytes, {label}",
                ratio,
                seconds(ours_s),
                seconds(raw_s),
                target,
                ratio <= 1.25 if target else None,
                "CRC-32 of every byte is checked; assigning the arrays to the model's "
                "variables is not included (the same for any format)",
                spread(round_ratios),
            )
        )
        print(f"  restore {label}: {format_ratio(ratio)} ({seconds(ours_s)} vs {seconds(raw_s)})")
    return rows


def raw_read(paths: list[Path]) -> float:
    """Read each file into a fresh buffer of its size: the floor for a restore."""
    started = time.perf_counter()
    for path in paths:
        buffer = bytearray(path.stat().st_size)
        with open(path, "rb", buffering=0) as file:
            view = memoryview(buffer)
            while view:
                count = file.readinto(view)
                if not count:
                    break
                view = view[count:]
    return time.perf_counter() - started


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
