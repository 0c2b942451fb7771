"""Cloud transfers: ftharness's upload and download against plain fsspec.

A checkpoint of the model's state size (about 400 MB in the full run) goes to
the real emulators on 127.0.0.1 (moto's S3 server, fake-gcs-server), both
ways, interleaved with a plain `fs.put_file` / `fs.get_file` of the same
bytes. Ours does more: data files then a create-only manifest on upload;
checksum verification, fsyncs and the atomic local commit on download. The
emulators bound the absolute speed (loopback, one process each); the ratio
is what ftharness adds on top of fsspec.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.context import REPO, Context
from benchmarks.measure import Row, format_ratio, interleaved, median, seconds

# The emulator launchers are the tests' (tests/cloud/emulators.py).
sys.path.insert(0, str(REPO / "tests" / "cloud"))
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

from emulators import GcsEmulator, S3Emulator

from ftharness.checkpoint.local import LocalCheckpointStore
from ftharness.checkpoint.manifest import WriterInfo
from ftharness.checkpoint.remote import RemoteCheckpointStore

NAME = "cloud"
ARRAYS = "arrays.bin"


def run(ctx: Context) -> list[Row]:
    size = ctx.calibration()["state_bytes"]
    source = LocalCheckpointStore(ctx.fresh_dir("cloud-source"))
    payload = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)
    ref = source.commit(
        step=1, epoch=0, batch=1, files={ARRAYS: [memoryview(payload)], "state.json": [b"{}"]},
        writer=WriterInfo.current("benchmark"),
    )  # fmt: skip
    del payload
    rows = []
    for emulator_class in (S3Emulator, GcsEmulator):
        emulator = emulator_class(ctx.fresh_dir(f"{emulator_class.protocol}-data"))
        emulator.start()
        try:
            emulator.make_bucket()
            rows += measure(ctx, emulator, source, ref, size)
        finally:
            emulator.kill()
    return rows


def measure(ctx: Context, emulator, source, ref, size: int) -> list[Row]:
    # One client per direction, made once: their set-up is not what we measure.
    remote = RemoteCheckpointStore(emulator.url("upload"), emulator.storage_options)
    fs = remote.fs
    fetched = RemoteCheckpointStore(emulator.url("download"), emulator.storage_options)
    rounds = max(3, ctx.settings.repeats)
    counter = iter(range(10**6))

    def ours_up() -> float:
        started = time.perf_counter()
        uploaded = remote.upload(source, ref)
        elapsed = time.perf_counter() - started
        remote.delete(uploaded)  # the manifest is create-only: clear the way, untimed
        return elapsed

    def plain_up() -> float:
        started = time.perf_counter()
        fs.put_file(str(ref.path / ARRAYS), remote.path(f"plain-{next(counter)}", ARRAYS))
        return time.perf_counter() - started

    fetched.upload(source, ref)
    remote_ref = fetched.latest()
    downloads = Path(ctx.fresh_dir(f"{emulator.protocol}-downloads"))

    def ours_down() -> float:
        target = LocalCheckpointStore(downloads / f"ours-{next(counter)}")
        started = time.perf_counter()
        fetched.download(remote_ref, target)
        return time.perf_counter() - started

    def plain_down() -> float:
        target = downloads / f"plain-{next(counter)}"
        started = time.perf_counter()
        fetched.fs.get_file(f"{remote_ref.path}/{ARRAYS}", str(target))
        return time.perf_counter() - started

    rows = []
    for direction, measures in (
        ("upload", {"ftharness": ours_up, "fsspec": plain_up}),
        ("download", {"ftharness": ours_down, "fsspec": plain_down}),
    ):
        results = interleaved(measures, rounds)
        ours, plain = median(results["ftharness"]), median(results["fsspec"])
        rows.append(
            Row(
                NAME,
                f"{direction} {size / 1e6:.0f} MB to {emulator.protocol}:// emulator / plain "
                f"fsspec {'put' if direction == 'upload' else 'get'}_file",
                ours / plain,
                f"{seconds(ours)} ({size / ours / 1e6:.0f} MB/s)",
                f"{seconds(plain)} ({size / plain / 1e6:.0f} MB/s)",
                note=f"median of {rounds}; ratio {format_ratio(ours / plain)}",
            )
        )
    return rows
