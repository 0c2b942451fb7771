"""End to end against real emulators: preemption, a new machine, outages, leases."""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time

import psutil
import pytest
from emulators import GcsEmulator
from support import (
    BATCHES_PER_EPOCH,
    PYTHON,
    TOTAL_BATCHES,
    WORKERS,
    batch_log,
    keras_worker_command,
    read_report,
    wait_for,
)

from ftharness.checkpoint.local import LocalCheckpointStore
from ftharness.checkpoint.remote import RemoteCheckpointStore
from ftharness.exitcodes import ExitCode


def cloud_env(emulator) -> dict:
    return {
        "FTHARNESS_STORAGE_OPTIONS": json.dumps(emulator.storage_options),
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }


@pytest.mark.slow
@pytest.mark.parametrize("emulator_fixture", ["s3_emulator", "gcs_emulator"])
def test_preempted_run_resumes_bit_identical_on_a_new_machine(
    request, emulator_fixture, supervise, tmp_path, reference
):
    emulator = request.getfixturevalue(emulator_fixture)
    url = emulator.url(f"e2e-{tmp_path.name}")
    report, batches = tmp_path / "report.json", tmp_path / "batches"

    def worker(sleep: float) -> list[str]:
        return keras_worker_command(report, batches, sleep=sleep)

    first_machine = tmp_path / "machine-1"
    first = supervise(
        ["--backup-dir", url, "--local-dir", str(first_machine), "--", *worker(0.05)],
        env=cloud_env(emulator),
    )
    wait_for(lambda: len(batch_log(batches)) >= BATCHES_PER_EPOCH + 7, 120, "mid-epoch training")
    first.process.send_signal(signal.SIGTERM)
    assert first.wait(60) == ExitCode.PREEMPTED
    trained = len(batch_log(batches))
    assert "final upload done" in first.log
    remote = RemoteCheckpointStore(url, emulator.storage_options)
    assert remote.latest().step == trained  # the final checkpoint reached the bucket

    shutil.rmtree(first_machine)  # the spot VM is gone, and its disk with it
    second = supervise(
        ["--backup-dir", url, "--local-dir", str(tmp_path / "machine-2"), "--", *worker(0)],
        name="second",
        env=cloud_env(emulator),
    )
    assert second.wait(120) == ExitCode.FINISHED
    assert f"fetched ckpt-{trained:012d}" in second.log
    facts = read_report(report)
    assert facts["digest"] == reference["digest"]
    assert facts["learning_rate"] == reference["learning_rate"]
    assert batch_log(batches) == list(range(1, TOTAL_BATCHES + 1))


@pytest.mark.slow
def test_emulator_killed_mid_upload_never_shows_a_partial_checkpoint(supervise, tmp_path):
    emulator = GcsEmulator(tmp_path / "gcs-data")
    emulator.start()
    emulator.make_bucket()
    url = emulator.url("outage")
    progress = tmp_path / "progress"
    try:
        run = supervise(
            [
                "--backup-dir",
                url,
                "--local-dir",
                str(tmp_path / "local"),
                "--keep",
                "3",
                "--",
                PYTHON,
                str(WORKERS / "bulk_worker.py"),
                "40",
                "48",
                "0.3",
                str(progress),
            ],
            env=cloud_env(emulator),
        )
        remote = RemoteCheckpointStore(url, emulator.storage_options)
        partial_sightings: list[str] = []
        watching = threading.Event()

        def watch_the_bucket():
            # While the store is up, every checkpoint it lists must be whole.
            while not watching.is_set():
                try:
                    for ref in remote.list_committed():
                        manifest = remote.read_manifest(ref)
                        for name, entry in manifest.files.items():
                            size = remote.fs.info(f"{ref.path}/{name}")["size"]
                            if size != entry.size:
                                partial_sightings.append(f"{ref.name}/{name}: {size}")
                except Exception:  # the emulator is down, or retention just pruned the ref
                    pass
                time.sleep(0.1)

        watcher = threading.Thread(target=watch_the_bucket, daemon=True)
        watcher.start()
        wait_for(lambda: run.log.count("uploaded ckpt") >= 2, 90, "two uploads")
        emulator.kill()  # likely mid-upload: one starts right after each commit
        steps_at_outage = len(progress.read_text().split("\n"))
        time.sleep(4)
        # Training went on while the store was down.
        assert len(progress.read_text().split("\n")) > steps_at_outage
        uploads_before = run.log.count("uploaded ckpt")
        emulator.start()
        wait_for(
            lambda: run.log.count("uploaded ckpt") > uploads_before, 120, "an upload after restart"
        )
        assert run.wait(180) == ExitCode.FINISHED
        watching.set()
        watcher.join()
        assert partial_sightings == []
        newest = remote.latest()
        assert newest.step == 40
        remote.download(newest, LocalCheckpointStore(tmp_path / "verify"))  # verifies checksums
    finally:
        emulator.kill()


def test_second_supervisor_on_a_leased_prefix_waits_and_takes_over_after_expiry(
    s3_emulator, supervise, tmp_path
):
    url = s3_emulator.url(f"lease-{tmp_path.name}")
    env = cloud_env(s3_emulator)
    ready = tmp_path / "ready"
    sleeper = f"import pathlib, time; pathlib.Path({str(ready)!r}).touch(); time.sleep(120)"
    first = supervise(
        [
            "--backup-dir",
            url,
            "--local-dir",
            str(tmp_path / "a"),
            "--lease-ttl",
            "3",
            "--",
            PYTHON,
            "-c",
            sleeper,
        ],
        name="first",
        env=env,
    )
    wait_for(ready.exists, 60, "the first run's worker")

    refused = supervise(
        [
            "--backup-dir",
            url,
            "--local-dir",
            str(tmp_path / "b"),
            "--lease-wait",
            "0",
            "--",
            PYTHON,
            "-c",
            "pass",
        ],
        name="refused",
        env=env,
    )
    assert refused.wait(60) == ExitCode.BACKUP_DIR_LOCKED
    assert f"supervisor pid {first.process.pid}" in refused.log
    assert "launched" not in refused.log

    # The first run dies without releasing its lease (a lost VM).
    worker = psutil.Process(first.process.pid).children()[0]
    first.process.kill()
    worker.kill()
    second = supervise(
        [
            "--backup-dir",
            url,
            "--local-dir",
            str(tmp_path / "c"),
            "--lease-wait",
            "60",
            "--",
            PYTHON,
            "-c",
            "pass",
        ],
        name="second",
        env=env,
    )
    assert second.wait(90) == ExitCode.FINISHED
    assert "waiting up to" in second.log or "took over an expired lease" in second.log
    assert "took over an expired lease" in second.log
