"""Inspection of a real supervised Keras run: a crash, a preemption, then the finish.

One run for the whole module (real TensorFlow, real signals, two supervisor
sessions on the same backup directory):
  session 1, attempt 1: crashes after step 6 (EXIT_AT_STEP); committed: 4
  session 1, attempt 2: restarts from 4; SIGTERM once step 8 is committed:
                        final checkpoint, supervisor exits 143
  session 2, attempt 1: restarts from the final checkpoint, finishes at 16
While session 1 runs, its metrics are scraped over HTTP and `gc` is refused
by the live run's lock.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import BASE_ENV, PYTHON, REPO, WORKERS, Supervised, wait_for

from ftharness.checkpoint.local import LocalCheckpointStore
from ftharness.events import read_records
from ftharness.exitcodes import ExitCode
from ftharness.inspect.backup import open_backup
from ftharness.inspect.story import tell
from ftharness.inspect.timeline import render, timeline_data

pytestmark = pytest.mark.slow

TRAINING = [
    *("--epochs", "2", "--samples", "64", "--batch-size", "8"),
    *("--save-freq", "4", "--sleep", "0.05"),
]
CRASH_STEP = 6  # the first attempt exits 1 after this step; its last commit is 4
LAST_STEP = 16  # 2 epochs x 8 batches


@dataclass
class Run:
    backup: Path
    exit_codes: tuple[int, int]
    metrics: dict[tuple[str, tuple], float]  # scraped during session 1's attempt 2
    gc_while_live: subprocess.CompletedProcess
    gc_dry_run_while_live: subprocess.CompletedProcess
    supervisor_pid: int  # the second session's, which held the lock during the gc calls


def ftharness(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "ftharness", *args],
        capture_output=True,
        text=True,
        env=BASE_ENV,
        cwd=REPO,
        timeout=120,
    )


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    directory = tmp_path_factory.mktemp("inspect")
    backup = directory / "b"
    command = [
        *("--backup-dir", str(backup), "--run-id", "demo", "--backoff-initial", "0.1"),
        # --keep-backup: the finished run's checkpoints are what is inspected.
        *("--", PYTHON, str(WORKERS / "keras_worker.py"), *TRAINING, "--keep-backup"),
    ]
    env = {"EXIT_AT_STEP": str(CRASH_STEP)}  # acts on a supervisor's first attempt only
    first = Supervised(["--metrics-port", "0", *command], directory / "first.log", env=env)
    try:
        found = wait_for(
            lambda: re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", first.log),
            120,
            "the metrics server",
        )
        port = int(found.group(1))
        wait_for(lambda: "launched attempt 2" in first.log, 120, "the restart after the crash")
        crash_restart = ("ftharness_restarts_total", (("cause", "crash"),))
        metrics = wait_for(
            lambda: (scraped := scrape(port)).get(crash_restart) == 1 and scraped,
            10,
            "the restart in the metrics",
        )
        store = LocalCheckpointStore(backup)
        wait_for(lambda: (store.latest_step() or 0) >= 8, 120, "step 8's checkpoint", 0.02)
        first.process.send_signal(signal.SIGTERM)
        first_code = first.wait(60)
    finally:
        first.kill()
    second = Supervised(command, directory / "second.log", env=env)
    try:
        # A live run holds the directory (its worker is still importing
        # TensorFlow): gc must refuse, dry or not.
        wait_for(lambda: "launched attempt 1" in second.log, 30, "the second session")
        gc_while_live = ftharness("gc", str(backup), "--keep", "1")
        gc_dry_run_while_live = ftharness("gc", str(backup), "--keep", "1", "--dry-run")
        second_code = second.wait(180)
    finally:
        second.kill()
    assert (first_code, second_code) == (ExitCode.PREEMPTED, ExitCode.FINISHED), (
        first.log + second.log
    )
    return Run(
        backup,
        (first_code, second_code),
        metrics,
        gc_while_live,
        gc_dry_run_while_live,
        second.process.pid,
    )


def records(backup: Path):
    loaded, problems = read_records(open_backup(str(backup)).event_files())
    assert problems == []
    return loaded


def test_metrics_scraped_over_http_while_the_supervisor_runs(run):
    metrics = run.metrics
    assert metrics[("ftharness_restarts_total", (("cause", "crash"),))] == 1
    assert metrics[("ftharness_restarts_total", (("cause", "killed"),))] == 0
    assert metrics[("ftharness_attempt", ())] == 2
    assert metrics[("ftharness_last_committed_step", ())] == 4  # the crashed attempt's commit
    assert metrics[("ftharness_checkpoints_committed_total", ())] >= 1
    assert metrics[("ftharness_checkpoint_bytes_total", ())] > 0
    assert metrics[("ftharness_seconds_since_last_commit", ())] >= 0
    assert metrics[("ftharness_preemptions_total", ())] == 0
    assert metrics[("ftharness_upload_seconds_count", ())] == 0  # nothing uploads here


def test_status_tells_the_crash_the_preemption_and_the_finish(run):
    result = ftharness("status", str(run.backup), "--json")
    assert result.returncode == 0, result.stderr
    print(ftharness("status", str(run.backup)).stdout)  # shown if an assertion fails
    story = json.loads(result.stdout)
    attempts = story["attempts"]
    assert [a["outcome"] for a in attempts] == ["crashed", "preempted", "finished"]
    assert [a["record"]["session"] for a in attempts].count(attempts[0]["record"]["session"]) == 2
    assert [a["gap_kind"] for a in attempts] == [None, "backoff", "no supervisor"]

    crashed, preempted, finished = attempts
    assert crashed["detail"] == "exit code 1"
    assert (crashed["start_step"], crashed["end_step"]) == (None, 4)
    # Exact: the next attempt restarted from the newest commit. Estimated:
    # the steps trained past it (2 really: 5 and 6), at most one save interval.
    assert preempted["start_step"] == 4
    assert crashed["estimated"]["lost_seconds"] > 0
    # Seconds / the pace of another attempt, capped at one save interval: under
    # load the two paces differ, so only the cap is certain.
    assert 0 <= crashed["estimated"]["lost_steps"] <= 4

    final_step = preempted["end_step"]
    assert 8 <= final_step < LAST_STEP
    assert preempted["detail"].startswith(f"SIGTERM; final checkpoint at step {final_step} in ")
    assert preempted["record"]["end"]["exit_code"] == 128 + signal.SIGTERM
    assert preempted["estimated"]["lost_steps"] == 0  # a clean preemption loses nothing
    assert preempted["final_checkpoint_seconds"] > 0
    assert (finished["start_step"], finished["end_step"]) == (final_step, LAST_STEP)

    assert story["state"] == "finished"
    assert story["last_step"] == LAST_STEP
    assert 0 < story["goodput"] < 1
    assert story["checkpoints_committed"] >= 4  # 4, 8, the final one, 16 (12 may be missed)

    text = ftharness("status", str(run.backup)).stdout
    assert "run demo" in text and "finished after 3 attempts (2 supervisor sessions)" in text
    assert "crashed: exit code 1" in text
    assert f"preempted: SIGTERM; final checkpoint at step {final_step}" in text
    assert re.search(r"goodput \d+%", text)


def test_ls_lists_the_checkpoints_newest_first(run):
    listed = json.loads(ftharness("ls", str(run.backup), "--json").stdout)
    assert [entry["step"] for entry in listed] == [16, 12]  # retention keeps 2
    assert all(entry["intact"] and entry["checked"] == "sizes" for entry in listed)
    assert listed[0]["writer"]["run_id"] == "demo"
    assert (listed[0]["epoch"], listed[0]["batch"]) == (2, 0)
    text = ftharness("ls", str(run.backup), "--verify").stdout
    assert text.splitlines()[0].split()[:3] == ["STEP", "EPOCH", "BATCH"]
    assert text.count("checksums ok") == 2 and "/run demo" in text


def test_verify_an_intact_then_a_damaged_checkpoint(run, tmp_path):
    intact = ftharness("verify", str(run.backup))
    assert intact.returncode == 0, intact.stderr
    assert "ckpt-000000000016 (step 16): intact" in intact.stdout

    damaged = tmp_path / "b"
    shutil.copytree(run.backup, damaged)
    arrays = damaged / "ckpt-000000000016" / "arrays.bin"
    data = bytearray(arrays.read_bytes())
    data[len(data) // 2] ^= 0xFF
    arrays.write_bytes(data)
    flipped = ftharness("verify", str(damaged))
    assert flipped.returncode == ExitCode.CHECKPOINT_DAMAGED
    assert "ckpt-000000000016 (step 16): DAMAGED\n  arrays.bin fails its checksum" in flipped.stdout
    assert "restore would fall back to ckpt-000000000012" in flipped.stderr

    arrays.write_bytes(data[:100])
    truncated = ftharness("verify", str(damaged), "16")
    assert truncated.returncode == ExitCode.CHECKPOINT_DAMAGED
    assert f"arrays.bin has 100 bytes, manifest says {len(data)}" in truncated.stdout
    assert ftharness("verify", str(damaged), "ckpt-000000000012").returncode == 0
    missing = ftharness("verify", str(damaged), "13")
    assert missing.returncode == ExitCode.USAGE_ERROR
    assert "no committed checkpoint ckpt-000000000013 (steps: 12, 16)" in missing.stderr


def test_gc_refuses_while_a_live_run_holds_the_directory(run):
    for refused in (run.gc_while_live, run.gc_dry_run_while_live):
        assert refused.returncode == ExitCode.BACKUP_DIR_LOCKED
        assert f"supervisor pid {run.supervisor_pid}" in refused.stderr
    assert "would delete" in run.gc_dry_run_while_live.stdout


def test_gc_dry_run_then_gc_keep_the_newest(run, tmp_path):
    dry = ftharness("gc", str(run.backup), "--keep", "1", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        "would delete ckpt-000000000012 (step 12)",
        "would keep ckpt-000000000016",
    ]
    assert [ref.step for ref in LocalCheckpointStore(run.backup).list_committed()] == [12, 16]

    copy = tmp_path / "b"
    shutil.copytree(run.backup, copy)
    done = ftharness("gc", str(copy), "--keep", "1")
    assert done.returncode == 0, done.stderr
    assert [ref.step for ref in LocalCheckpointStore(copy).list_committed()] == [16]
    assert ftharness("gc", str(copy), "--keep", "0").returncode == ExitCode.USAGE_ERROR


def test_timeline_draws_the_event_record(run, tmp_path):
    from PIL import Image

    loaded = records(run.backup)
    drawn = render(timeline_data(tell(loaded)), tmp_path / "run.png")
    print(drawn)  # shown if an assertion fails
    origin = loaded[0].launched_at
    assert drawn.origin == origin
    assert [(b.start, b.end, b.outcome) for b in drawn.bars] == [
        (r.launched_at - origin, r.end.ended_at - origin, outcome)
        for r, outcome in zip(loaded, ["crashed", "preempted", "finished"], strict=True)
    ]
    assert [(t.attempt, t.time, t.step) for t in drawn.ticks] == [
        (number, c.committed_at - origin, c.step)
        for number, r in enumerate(loaded, start=1)
        for c in r.checkpoints
    ]
    assert [(m.attempt, m.kind) for m in drawn.markers] == [(1, "crash"), (2, "stop requested")]
    assert "goodput" in drawn.title

    with Image.open(tmp_path / "run.png") as image:
        assert image.size == (1000, 300)
        colors = image.convert("RGB").getcolors(1_000_000)

    def pixels_near(target: tuple[int, int, int]) -> int:
        return sum(
            count
            for count, color in colors
            if max(abs(a - b) for a, b in zip(color, target, strict=True)) <= 12
        )

    # Bars in their outcomes' colors (pale where startup is estimated).
    assert pixels_near((0x2E, 0x7D, 0x32)) > 50  # finished: green
    assert pixels_near((0xEF, 0x6C, 0x00)) > 20  # preempted: orange
    assert pixels_near((0xC6, 0x28, 0x28)) > 20  # crashed, and the crash marker: red

    result = ftharness("timeline", str(run.backup), "-o", str(tmp_path / "run.html"))
    assert result.returncode == 0, result.stderr
    assert "data:image/png;base64," in (tmp_path / "run.html").read_text()
