"""The main job: a real supervised training run, preempted, resumed, compared.

1. `ftharness supervise` runs examples/train.py with local checkpoints;
2. a SIGTERM arrives mid-epoch, as from `docker stop` or the kubelet: the
   worker commits a final checkpoint and the supervisor exits 143;
3. the same command is run again: it resumes at the exact next batch;
4. an uninterrupted run of the same training is made for comparison.
The demo exits 0 only if the resumed run ends bit-identical to it.

    python examples/preemption_demo.py [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRAINING = ["--epochs", "4", "--samples", "256", "--batch-size", "8", "--save-freq", "20"]

# TensorFlow's C++ start-up notices, kept off the demo's screen (a variable
# the user set wins). TF_CPP_MIN_LOG_LEVEL=2 hides INFO and WARNING lines, but
# not "oneDNN custom operations are on" (with absl's "All log messages before
# absl::InitializeLog()" in front of it): TensorFlow 2.21 logs it from static
# initializers of two of its libraries, before reading that variable, so it
# prints twice per process. The only setting that removes it is
# TF_ENABLE_ONEDNN_OPTS=0; every run here, the reference included, uses the
# same kernels, so the comparison stays exact.
QUIET_TENSORFLOW = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0"}


def environment() -> dict[str, str]:
    return {**QUIET_TENSORFLOW, **os.environ}


def supervise(backup: Path, report: Path, sleep: float) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ftharness",
            "supervise",
            "--backup-dir",
            str(backup),
            "--",
            sys.executable,
            str(HERE / "train.py"),
            *TRAINING,
            "--sleep",
            str(sleep),
            "--report",
            str(report),
            "--batch-log",
            str(report.with_suffix(".batches")),
        ],
        env=environment(),
        # The training prints its report as JSON; the demo prints its own summary.
        stdout=subprocess.DEVNULL,
    )


def batches_done(report: Path) -> int:
    log = report.with_suffix(".batches")
    return len(log.read_text().split()) if log.exists() else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.mkdtemp(prefix="ftharness-demo-"))
    )
    workdir = parser.parse_args().workdir
    backup, report = workdir / "backups", workdir / "resumed.json"
    print(f"== 1. supervised training, checkpoints in {backup}", flush=True)
    first = supervise(backup, report, sleep=0.05)
    while batches_done(report) < 45 and first.poll() is None:
        time.sleep(0.05)
    print(f"== 2. SIGTERM to the supervisor after {batches_done(report)} batches", flush=True)
    first.send_signal(signal.SIGTERM)
    code = first.wait()
    print(f"   supervisor exited {code} (143 = preempted, final checkpoint committed)", flush=True)
    if code != 143:
        return 1

    print("== 3. the same command again: resume", flush=True)
    if supervise(backup, report, sleep=0).wait() != 0:
        return 1

    print("== 4. an uninterrupted run, for comparison", flush=True)
    reference = workdir / "uninterrupted.json"
    subprocess.run(
        [
            sys.executable,
            str(HERE / "train.py"),
            *TRAINING,
            "--sleep",
            "0",
            "--backup-dir",
            str(workdir / "uninterrupted-backups"),
            "--report",
            str(reference),
        ],
        env=environment(),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    resumed, uninterrupted = json.loads(report.read_text()), json.loads(reference.read_text())
    counts = [int(n) for n in report.with_suffix(".batches").read_text().split()]
    identical = resumed["digest"] == uninterrupted["digest"]
    print(f"   weights+optimizer digest, resumed:       {resumed['digest'][:16]}")
    print(f"   weights+optimizer digest, uninterrupted: {uninterrupted['digest'][:16]}")
    print(f"   final learning rate: {resumed['learning_rate']} vs {uninterrupted['learning_rate']}")
    print(
        f"   batches trained across both attempts: {len(counts)} "
        f"(each exactly once: {counts == list(range(1, len(counts) + 1))})"
    )
    print("RESULT: bit-identical" if identical else "RESULT: DIFFERENT", flush=True)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
