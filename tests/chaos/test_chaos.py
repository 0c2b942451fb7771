"""Chaos: one supervised training, interrupted 30 times at random moments,
ends bit-identical to the same training never interrupted.

The interruptions, drawn from a seeded generator (FTHARNESS_CHAOS_SEED, or
the default below; the seed is printed and in every failure message, so a
failure reproduces):
- SIGKILL to the worker (the OOM killer's way) after it trained a random
  number of batches plus a random fraction of one: the supervisor relaunches
  it at once (--backoff-initial 0) from the last committed checkpoint;
- the worker SIGKILLs itself half-way through writing the arrays of its
  k-th checkpoint (planned through a file the next launch reads): the torn
  write must never be loaded;
- SIGTERM to the supervisor (docker stop, the kubelet): the worker commits a
  final checkpoint, the supervisor exits 143 and is started again.
All the while the remote store is slow and failing: the backup URL is a
`faulty://` store (tests/faulty_fs.py, a real local directory behind a
wrapper) whose uploads and commits take up to 0.2 s and fail with a
connection reset one time in six, from the same seed. At the end the remote
store holds the newest checkpoint, intact.
Every relaunch pays a TensorFlow import, so the training is small and its
batches fast; most interruptions are SIGKILLs of the worker.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from support import BASE_ENV, PYTHON, REPO, WORKERS, ftharness_command, wait_for

from ftharness.checkpoint.local import LocalCheckpointStore
from ftharness.checkpoint.remote import RemoteCheckpointStore
from ftharness.exitcodes import ExitCode

pytestmark = pytest.mark.slow

DEFAULT_SEED = 20240611
INTERRUPTIONS = 30
TOTAL_STEPS = 192  # the worker's "chaos" case: 8 epochs of 24 batches, saved every 2
KINDS = ("kill",) * 6 + ("kill-in-write",) * 2 + ("term",) * 2
WORKER = WORKERS / "exactness_worker.py"
FAULTY_SITE = REPO / "tests" / "faulty_site"


def store_faults(seed: int) -> str:
    """The remote store's faults (tests/faulty_fs.py `register`): slow, and failing."""
    faults = [
        {"method": method, "match": "ckpt-", "max_delay": 0.2, "probability": 1 / 6}
        | {"error": "reset"}
        for method in ("put_file", "pipe_file")
    ]
    return json.dumps({"seed": seed, "faults": faults})


def chaos_seed() -> int:
    return int(os.environ.get("FTHARNESS_CHAOS_SEED", DEFAULT_SEED))


def progress(path: Path) -> int:
    """Steps trained so far by any attempt (the last line: attempts redo steps)."""
    if not path.exists():
        return 0
    lines = path.read_text().split()
    return int(lines[-1]) if lines else 0


def lines(path: Path) -> int:
    return len(path.read_text().split()) if path.exists() else 0


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def test_thirty_random_interruptions_end_bit_identical(supervise, tmp_path):
    seed = chaos_seed()
    print(f"chaos seed {seed} (set FTHARNESS_CHAOS_SEED={seed} to reproduce)")
    chance = random.Random(seed)
    context = f"[FTHARNESS_CHAOS_SEED={seed}]"

    # The uninterrupted reference runs beside the chaos (it waits on nothing).
    reference_report = tmp_path / "reference" / "report.json"
    reference_report.parent.mkdir()
    reference = subprocess.Popen(
        [
            PYTHON,
            str(WORKER),
            "chaos",
            "--backup-dir",
            str(tmp_path / "reference" / "b"),
            "--report",
            str(reference_report),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=BASE_ENV,
        cwd=REPO,
    )

    chaos = tmp_path / "chaos"
    chaos.mkdir()
    pid_file, progress_file, plan = chaos / "pid", chaos / "progress", chaos / "plan.json"
    report = chaos / "report.json"
    env = {
        "WORKER_PID_FILE": str(pid_file),
        "PROGRESS_FILE": str(progress_file),
        "CHAOS_PLAN": str(plan),
        "BATCH_SLEEP": "0.01",
        "KEEP_BACKUP": "1",  # the end checks the remote's newest checkpoint
        # The supervisor serves faulty:// from tests/faulty_fs.py.
        "FAULTY_FS_PLAN": store_faults(seed),
        "PYTHONPATH": os.pathsep.join(
            [str(FAULTY_SITE), str(REPO), str(REPO / "tests"), BASE_ENV.get("PYTHONPATH", "")]
        ),
    }
    remote_dir = chaos / "remote"
    command = [
        "--backup-dir", f"faulty://{remote_dir}", "--local-dir", str(chaos / "backups"),
        "--backoff-initial", "0", "--max-restarts", "100", "--grace-period", "30", "--",
        PYTHON, str(WORKER), "chaos", "--report", str(report),
    ]  # fmt: skip

    def start_supervisor():
        return supervise(command, env=env)

    kinds = [chance.choice(KINDS) for _ in range(INTERRUPTIONS)]
    run = start_supervisor()
    started = time.monotonic()
    done: Counter[str] = Counter()
    previous_pid = None
    for index, kind in enumerate(kinds):
        what = f"{context} interruption {index + 1}/{INTERRUPTIONS} ({kind})"
        # A new worker is up and training: it wrote its pid and trained a batch.
        wait_for(
            lambda old=previous_pid: read_pid(pid_file) not in (None, old),
            120,
            f"{what}: a new worker",
        )
        pid = read_pid(pid_file)
        baseline = lines(progress_file)
        wait_for(lambda b=baseline: lines(progress_file) > b, 120, f"{what}: training")
        assert progress(progress_file) < TOTAL_STEPS, f"{what}: training ended too soon"
        next_kind = kinds[index + 1] if index + 1 < len(kinds) else None
        if next_kind == "kill-in-write":
            # Read by the next worker at its start, before it trains.
            plan.write_text(json.dumps({"kill_during_write_at_commit": chance.randint(1, 3)}))
        if kind == "kill-in-write":
            wait_for(
                lambda old=pid: read_pid(pid_file) != old,
                120,
                f"{what}: the worker killing itself in a write",
            )
        else:
            batches = chance.randint(0, 5)
            wait_for(lambda b=baseline + 1 + batches: lines(progress_file) >= b, 120, what)
            time.sleep(chance.uniform(0, 0.03))  # anywhere within a batch, or a save
            if kind == "kill":
                os.kill(pid, signal.SIGKILL)
            else:
                run.process.send_signal(signal.SIGTERM)
                assert run.wait(60) == ExitCode.PREEMPTED, f"{what}: {run.log[-3000:]}"
                run = start_supervisor()
        done[kind] += 1
        previous_pid = pid

    assert run.wait(300) == ExitCode.FINISHED, f"{context} {run.log[-3000:]}"
    elapsed = time.monotonic() - started
    assert reference.wait(300) == 0
    log = (tmp_path / "supervisor.log").read_text()
    print(f"{context} {dict(done)} in {elapsed:.0f} s; log: {tmp_path / 'supervisor.log'}")
    assert sum(done.values()) == INTERRUPTIONS
    assert log.count("killed by SIGKILL") >= done["kill"] + done["kill-in-write"], context
    assert log.count("final checkpoint in") >= done["term"], context
    if done["kill-in-write"]:
        assert "unfinished checkpoint write(s): .tmp-ckpt-" in log, context
    expected = json.loads(reference_report.read_text())
    actual = json.loads(report.read_text())
    differing = sorted(k for k in expected if expected[k] != actual.get(k))
    assert not differing, f"{context} the chaos run differs in {differing}"
    assert actual["steps"] == TOTAL_STEPS
    # The store failed along the way, and still holds the newest checkpoint, intact.
    assert "ConnectionResetError" in log, context
    remote = RemoteCheckpointStore(f"file://{remote_dir}")
    newest = remote.latest()
    assert (
        newest is not None and newest.step == LocalCheckpointStore(chaos / "backups").latest_step()
    )
    assert remote.verify(newest) == [], context
    verify = subprocess.run(
        ftharness_command("verify", str(remote_dir)), capture_output=True, text=True, timeout=120
    )
    assert verify.returncode == 0, f"{context} {verify.stdout} {verify.stderr}"
