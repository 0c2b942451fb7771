"""The exactness matrix: every case, interrupted mid-epoch and resumed, ends
bit-identical to the same training never interrupted.

Each case (tests/workers/exactness_worker.py) runs in real processes:
1. an uninterrupted reference run;
2. a run that receives SIGTERM after step N (the final checkpoint is
   committed, exit 143), and for most cases a resumed run that then crashes
   after step M (exit 3, no final checkpoint: the next one restarts from the
   last periodic checkpoint and trains the lost batches again);
3. a last run that resumes and finishes.
The reports (digests of weights and optimizer slots, learning rate, History,
callbacks' states, CSV log, next draws of the global generators) must be
equal. Each case also checks where the resumes started, so that a change of
schedule cannot turn a mid-epoch resume into an epoch-boundary one unnoticed.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import BASE_ENV, PYTHON, REPO, WORKERS

pytestmark = pytest.mark.slow

WORKER = WORKERS / "exactness_worker.py"
PREEMPTED = 143
CRASHED = 3
NOT_EXACT = "a resume of this training will not be exact"


@dataclass(frozen=True)
class Case:
    interruptions: tuple[str, ...]
    # The "resuming at ..." text each resumed run must log, in order.
    resumes: tuple[str, ...]
    # The one-line warning every run must give at start (None: exact, no warning).
    warning: str | None = None
    # Report keys the warning says may differ (nothing else may).
    may_differ: tuple[str, ...] = ()


MATRIX = {
    # NumPy arrays, shuffle=True, validation_split, Dropout + BatchNormalization, Adam.
    "arrays": Case(("sigterm:11",), ("epoch 1, batch 3",)),
    # tf.data: shuffle(reshuffle_each_iteration=True) -> map -> batch -> prefetch.
    "tfdata_reshuffle": Case(("sigterm:13",), ("epoch 1, batch 5",)),
    # tf.data: map -> cache -> shuffle(reshuffle_each_iteration=False); one stop at an epoch end.
    "tfdata_cache_fixed_shuffle": Case(
        ("sigterm:8", "crash:19"), ("epoch 1, batch 0", "epoch 2, batch 2")
    ),
    # tf.data: shuffle(reshuffle) -> cache: later epochs replay the first epoch's order.
    "tfdata_cache_after_shuffle": Case(("sigterm:12",), ("epoch 1, batch 4",)),
    # fit(steps_per_epoch=5) over a repeated dataset of 8 batches: one iterator for all epochs.
    "tfdata_repeat_steps": Case(
        ("sigterm:7", "crash:17"), ("epoch 1, batch 2", "epoch 3, batch 0")
    ),
    # tf.data of unknown length (filter): Keras learns the epoch length in epoch 0.
    "tfdata_unknown_length": Case(
        ("sigterm:5", "crash:19"), ("epoch 0, batch 5", "epoch 2, batch 2")
    ),
    # keras.utils.PyDataset with get_state/set_state, reordered at each epoch end;
    # fit(shuffle=True) also has Keras shuffle its batch order with Python's random.
    # The crash is in the epoch resumed first: its checkpoint carries over the
    # generators recorded when that epoch's data started.
    "pydataset": Case(("sigterm:11", "crash:14"), ("epoch 1, batch 3", "epoch 1, batch 4")),
    # A Python generator (steps_per_epoch): not restorable, said at start; this one
    # restarts identically, so skipping forward is exact.
    "generator": Case(("sigterm:8",), ("epoch 1, batch 2",), warning="Python generator"),
    # Python random, NumPy, tf.random global generator, keras.random's SeedGenerator
    # drawn every batch; RandomFlip, RandomRotation, GaussianNoise, Dropout,
    # BatchNormalization; SGD with Nesterov momentum. Stopped at an epoch end.
    "rng": Case(("sigterm:16", "crash:20"), ("epoch 2, batch 0", "epoch 2, batch 2")),
    # mixed_float16 (LossScaleOptimizer's dynamic scale) around AdamW with CosineDecay.
    "mixed_precision_adamw": Case(("sigterm:11",), ("epoch 1, batch 3",)),
    # LearningRateScheduler, ReduceLROnPlateau, ModelCheckpoint(save_best_only),
    # EarlyStopping(restore_best_weights, stops at epoch 5), CSVLogger, History, and a
    # callback saved by pickling (opt-in). Crash after CSVLogger wrote epoch 2's row
    # but before the checkpoint: the row must not be written twice.
    "builtin_callbacks": Case(
        ("sigterm:12", "crash-at-epoch-end:2", "crash:37"),
        ("epoch 1, batch 4", "epoch 2, batch 0", "epoch 4, batch 0"),
    ),
    # fit() under MirroredStrategy with 2 logical CPU devices, a reshuffling tf.data pipeline;
    # the resumed epochs' metric accumulators are restored replica by replica.
    "mirrored_strategy": Case(("sigterm:11", "crash:19"), ("epoch 1, batch 3", "epoch 2, batch 2")),
    # ftharness.tf.TrainingCheckpoint: model, optimizer, tf.data iterator, tf.random.Generator.
    "custom_loop": Case(("sigterm:13",), ("step 13",)),
}


@dataclass(frozen=True)
class Run:
    returncode: int
    log: str
    report: dict | None


def run_case(case: str, directory: Path, interrupt: str | None = None) -> Run:
    directory.mkdir(parents=True, exist_ok=True)
    report = directory / "report.json"
    report.unlink(missing_ok=True)
    env = {**BASE_ENV, **({"INTERRUPT": interrupt} if interrupt else {})}
    result = subprocess.run(
        [
            PYTHON,
            str(WORKER),
            case,
            "--backup-dir",
            str(directory / "backups"),
            "--report",
            str(report),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=240,
    )
    facts = json.loads(report.read_text()) if report.exists() else None
    return Run(result.returncode, result.stderr, facts)


def expected_code(interrupt: str) -> int:
    return PREEMPTED if interrupt.startswith("sigterm") else CRASHED


def assert_same_reports(reference: dict, resumed: dict) -> None:
    differing = sorted(
        k for k in reference.keys() | resumed.keys() if reference.get(k) != resumed.get(k)
    )
    details = "; ".join(
        f"{key}: {str(reference.get(key))[:120]} != {str(resumed.get(key))[:120]}"
        for key in differing
    )
    assert not differing, f"resumed run differs from the uninterrupted one in {details}"


def warning_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if NOT_EXACT in line]


@pytest.mark.parametrize("case", list(MATRIX))
def test_interrupted_and_resumed_run_ends_bit_identical(case, tmp_path):
    spec = MATRIX[case]
    reference = run_case(case, tmp_path / "reference")
    assert reference.returncode == 0, reference.log[-4000:]

    chain = tmp_path / "interrupted"
    runs = []
    for interrupt in spec.interruptions:
        run = run_case(case, chain, interrupt)
        assert run.returncode == expected_code(interrupt), f"{interrupt}: {run.log[-4000:]}"
        runs.append(run)
    final = run_case(case, chain)
    assert final.returncode == 0, final.log[-4000:]
    runs.append(final)

    resumed_at = [
        line for run in runs[1:] for line in run.log.splitlines() if "resuming at" in line
    ]
    assert len(resumed_at) == len(spec.resumes), resumed_at
    for line, where in zip(resumed_at, spec.resumes, strict=True):
        assert f"resuming at {where}" in line

    assert_same_reports(
        {k: v for k, v in reference.report.items() if k not in spec.may_differ},
        {k: v for k, v in final.report.items() if k not in spec.may_differ},
    )

    for run in [reference, *runs]:
        lines = warning_lines(run.log)
        if spec.warning is None:
            assert lines == [], lines
        else:
            assert len(lines) == 1 and spec.warning in lines[0], run.log[-2000:]
