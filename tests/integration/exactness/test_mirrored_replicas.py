"""Keras fit() under MirroredStrategy: the checkpoint holds each replica's metric
accumulators; one of another replica count, or written without them, still resumes
(from their sum, said in one line); a crafted count is an incompatible checkpoint.

Real processes (tests/workers/exactness_worker.py, case mirrored_strategy, on
MIRRORED_REPLICAS logical CPU devices) and real checkpoints. The exact resume
itself is the exactness matrix's row mirrored_strategy.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from support import BASE_ENV, PYTHON, REPO, WORKERS

from ftharness.checkpoint.local import LocalCheckpointStore
from ftharness.exitcodes import ExitCode
from ftharness.keras.state import ARRAYS_FILE, STATE_FILE, TrainingState

pytestmark = pytest.mark.slow

NOT_EXACT = "a resume of this training will not be exact"


def run_mirrored(directory: Path, replicas: int, interrupt: str | None = None):
    env = {**BASE_ENV, "MIRRORED_REPLICAS": str(replicas)}
    if interrupt:
        env["INTERRUPT"] = interrupt
    return subprocess.run(
        [PYTHON, str(WORKERS / "exactness_worker.py"), "mirrored_strategy", "--backup-dir",
         str(directory / "b"), "--report", str(directory / "report.json")],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=240,
    )  # fmt: skip


def not_exact_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if NOT_EXACT in line]


def newest_state(backup: Path) -> dict:
    store = LocalCheckpointStore(backup)
    loaded = store.load(store.list_committed()[-1])
    return json.loads(loaded.files[STATE_FILE])


def reseal_newest(backup: Path, edit) -> None:
    """Rewrite the newest checkpoint's state.json through `edit(record)` and commit it
    again, checksummed, at its step: a checkpoint as another writer would have made it."""
    store = LocalCheckpointStore(backup)
    ref = store.list_committed()[-1]
    loaded = store.load(ref)
    record = json.loads(loaded.files[STATE_FILE])
    edit(record)
    shutil.rmtree(ref.path)  # this test's own copy
    store.commit(
        step=loaded.manifest.step,
        epoch=loaded.manifest.epoch,
        batch=loaded.manifest.batch,
        files={
            ARRAYS_FILE: [bytes(loaded.files[ARRAYS_FILE])],
            STATE_FILE: [json.dumps(record).encode()],
        },
        writer=loaded.manifest.writer,
    )


@pytest.fixture(scope="module")
def stopped_on_two(tmp_path_factory) -> Path:
    """A run on 2 replicas stopped at epoch 1, batch 3 (its final checkpoint committed)."""
    directory = tmp_path_factory.mktemp("two")
    stopped = run_mirrored(directory, 2, "sigterm:11")
    assert stopped.returncode == ExitCode.PREEMPTED, stopped.stderr[-3000:]
    return directory


def copy_of(stopped: Path, tmp_path: Path) -> Path:
    shutil.copytree(stopped / "b", tmp_path / "b")
    return tmp_path


def test_the_checkpoint_holds_each_replicas_metric_accumulators(stopped_on_two):
    record = newest_state(stopped_on_two / "b")
    assert record["replicas"] == 2
    metrics = record["arrays"]["metrics"]
    parts = record["arrays"]["metrics.replicas"]
    assert len(metrics) > 0 and len(parts) == 2 * len(metrics)
    assert [part["name"] for part in parts[:2]] == [
        f"{metrics[0]['name']}/replica_0",
        f"{metrics[0]['name']}/replica_1",
    ]
    # Read back: the parts of every accumulator add up to the sum saved beside them.
    store = LocalCheckpointStore(stopped_on_two / "b")
    loaded = store.load(store.list_committed()[-1])
    state = TrainingState.from_files(loaded.files, "newest")
    sums = state.arrays["metrics"]
    replicas = state.arrays["metrics.replicas"]
    for index, (_, total) in enumerate(sums):
        first, second = replicas[2 * index][1], replicas[2 * index + 1][1]
        assert (first + second == total).all()
    assert any((value != 0).any() for _, value in replicas)  # a mid-epoch checkpoint


# 4 and 1 divide the global batch of 8 (Keras fails on an uneven split, resumed or not).
@pytest.mark.parametrize("replicas", [4, 1])
def test_another_replica_count_resumes_from_the_sum_and_says_so(stopped_on_two, tmp_path, replicas):
    directory = copy_of(stopped_on_two, tmp_path)
    resumed = run_mirrored(directory, replicas)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at epoch 1, batch 3" in resumed.stderr
    (line,) = not_exact_lines(resumed.stderr)
    assert f"written on 2 replica(s) and this training runs on {replicas}" in line
    assert "Traceback" not in resumed.stderr


def test_a_checkpoint_without_per_replica_parts_still_resumes(stopped_on_two, tmp_path):
    directory = copy_of(stopped_on_two, tmp_path)

    def as_written_before(record: dict) -> None:
        # What an ftharness before per-replica parts wrote: no count, no parts
        # (their bytes stay in arrays.bin, which nothing then points at).
        del record["replicas"]
        del record["arrays"]["metrics.replicas"]

    reseal_newest(directory / "b", as_written_before)
    resumed = run_mirrored(directory, 2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at epoch 1, batch 3" in resumed.stderr
    (line,) = not_exact_lines(resumed.stderr)
    assert "without per-replica parts (by an older ftharness)" in line


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda record: record.update(replicas=3), id="count-of-3-for-parts-of-2"),
        pytest.param(lambda record: record.update(replicas="2"), id="count-not-an-integer"),
        pytest.param(lambda record: record.update(replicas=None), id="parts-without-a-count"),
        pytest.param(
            lambda record: record["arrays"]["metrics.replicas"].pop(), id="one-part-missing"
        ),
    ],
)
def test_crafted_per_replica_parts_are_an_incompatible_checkpoint(stopped_on_two, tmp_path, edit):
    directory = copy_of(stopped_on_two, tmp_path)
    reseal_newest(directory / "b", edit)
    store = LocalCheckpointStore(directory / "b")
    before = [ref.name for ref in store.list_committed()]
    refused = run_mirrored(directory, 2)
    assert refused.returncode == ExitCode.INCOMPATIBLE_CHECKPOINT, refused.stderr[-3000:]
    errors = [line for line in refused.stderr.splitlines() if line.startswith("ftharness: error:")]
    assert len(errors) == 1 and "is not a Keras training state" in errors[0], errors
    assert "Traceback" not in refused.stderr
    assert [ref.name for ref in store.list_committed()] == before  # nothing moved or removed
