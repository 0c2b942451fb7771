"""Two workers of a MultiWorkerMirroredStrategy custom loop, stopped, killed and
resumed, end bit-identical to the same two workers never interrupted.

Real TensorFlow, two real processes on 127.0.0.1 (tests/workers/multi_worker_loop.py,
each with its own local checkpoint directory, no supervisor), real signals.
What is compared: both workers' weights and Adam slots, the step reached and
the next draw of each worker's own NumPy generator (its per-worker state).
The measured times (SIGTERM -> both saved, SIGKILL -> survivor exits) are
printed: run with `-s` to see them.
"""

from __future__ import annotations

import shutil
import time

import pytest
from integration.multi_worker.two_workers import (
    PEER_LOST,
    PEER_STOPPED,
    PREEMPTED,
    SAVE_FREQ,
    SIGKILL,
    SIGTERM,
    STEPS,
    Group,
    same_training,
    stop,
)
from support import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[int, dict]:
    group = Group(tmp_path_factory.mktemp("reference"), sleep=0)
    codes = group.wait()
    assert codes == {0: 0, 1: 0}, group.log(0)[-3000:] + group.log(1)[-3000:]
    reports = group.reports()
    # The mirrored state is the same on both workers; their own generators are not.
    assert reports[0]["weights"] == reports[1]["weights"]
    assert reports[0]["optimizer"] == reports[1]["optimizer"]
    assert reports[0]["next_numpy"] != reports[1]["next_numpy"]
    return reports


def relaunch_and_compare(directory, reference, env: dict | None = None) -> Group:
    group = Group(directory, env=env)
    codes = group.wait()
    assert codes == {0: 0, 1: 0}, group.log(0)[-3000:] + group.log(1)[-3000:]
    for index, report in group.reports().items():
        assert same_training(reference[index], report) == [], (index, report)
    return group


def newest_step_of_both(group: Group) -> int:
    steps = {index: group.committed_steps(index)[-1] for index in (0, 1)}
    assert steps[0] == steps[1], steps
    return steps[0]


def stop_one_and_resume(tmp_path, reference, signalled: int, env: dict | None = None) -> None:
    group = Group(tmp_path, env=env)
    signalled_at = stop(group, signalled, SIGTERM, at_step=8)
    stopped = 1 - signalled
    # Both commit the same final step (the agreed one), then exit.
    wait_for(
        lambda: (
            group.committed_steps(0)[-1:] == group.committed_steps(1)[-1:]
            and group.committed_steps(0)[-1] > 5
        ),
        120,
        "both final checkpoints",
    )
    both_saved = time.monotonic() - signalled_at
    codes = group.wait()
    assert codes == {signalled: PREEMPTED, stopped: PEER_STOPPED}, group.log(stopped)[-3000:]
    final = newest_step_of_both(group)
    assert group.steps(0)[-1] == group.steps(1)[-1] == final
    print(f"\nSIGTERM to worker {signalled} -> both saved step {final}: {both_saved:.2f} s")

    resumed = relaunch_and_compare(tmp_path, reference, env)
    for index in (0, 1):
        assert f"resuming at step {final}" in resumed.log(index)
        # No step trained twice: the step log of both launches counts 1..STEPS once.
        assert resumed.steps(index) == list(range(1, STEPS + 1))


def test_sigterm_to_a_non_chief_stops_both_at_one_step_and_the_resume_is_exact(tmp_path, reference):
    stop_one_and_resume(tmp_path, reference, signalled=1)


def test_sigterm_to_the_chief_stops_both_at_one_step_and_the_resume_is_exact(tmp_path, reference):
    stop_one_and_resume(tmp_path, reference, signalled=0)


def test_a_strategy_the_user_built_is_coordinated_the_same(tmp_path, reference):
    stop_one_and_resume(tmp_path, reference, signalled=1, env={"PLAIN_STRATEGY": "1"})


def test_a_killed_worker_makes_the_survivor_exit_peer_lost_and_the_group_resume_exact(
    tmp_path, reference
):
    group = Group(tmp_path)
    killed_at = stop(group, 1, SIGKILL, at_step=12)
    survivor = group.processes[0]
    wait_for(lambda: survivor.poll() is not None, 120, "the survivor to exit")
    noticed = time.monotonic() - killed_at
    codes = group.wait()
    assert codes == {0: PEER_LOST, 1: -SIGKILL}, group.log(0)[-3000:]
    lines = [line for line in group.log(0).splitlines() if "peer of the group was lost" in line]
    assert len(lines) == 1 and "exiting 76" in lines[0], group.log(0)[-3000:]
    assert "Traceback" not in group.log(0)
    print(f"\nSIGKILL of worker 1 -> worker 0 exited 76 after {noticed:.2f} s (heartbeat 3 s)")
    trained_before = {index: len(group.steps(index)) for index in (0, 1)}

    resumed = relaunch_and_compare(tmp_path, reference)
    for index in (0, 1):
        steps = resumed.steps(index)
        redone = len(steps) - len(set(steps))
        assert 0 <= redone <= SAVE_FREQ, (index, steps)
        assert sorted(set(steps)) == list(range(1, STEPS + 1))
        assert len(steps) > trained_before[index]


def test_a_replacement_with_an_empty_directory_restores_its_part_from_the_chiefs_checkpoint(
    tmp_path, reference
):
    group = Group(tmp_path)
    stop(group, 1, SIGTERM, at_step=8)
    assert group.wait() == {0: PEER_STOPPED, 1: PREEMPTED}
    final = newest_step_of_both(group)
    chief_checkpoint = group.local_dir(0) / f"ckpt-{final:012d}"
    assert {"worker-0.json", "worker-1.json"} <= {p.name for p in chief_checkpoint.iterdir()}
    # Worker 1's machine is gone: its replacement has an empty directory, into
    # which its supervisor fetched the backup's newest checkpoint (the chief's).
    shutil.rmtree(group.local_dir(1))
    group.local_dir(1).mkdir()
    shutil.copytree(chief_checkpoint, group.local_dir(1) / chief_checkpoint.name)

    resumed = relaunch_and_compare(tmp_path, reference)
    assert f"resuming at step {final}" in resumed.log(1)


def test_the_group_restores_the_newest_step_every_worker_has(tmp_path, reference):
    group = Group(tmp_path)
    stop(group, 1, SIGTERM, at_step=8)
    assert group.wait() == {0: PEER_STOPPED, 1: PREEMPTED}
    final = newest_step_of_both(group)
    older = group.committed_steps(1)[-2]
    # Worker 1 lost its newest checkpoint; the chief still has it: both take the older.
    shutil.rmtree(group.local_dir(1) / f"ckpt-{final:012d}")

    resumed = Group(tmp_path)
    assert resumed.wait() == {0: 0, 1: 0}, resumed.log(0)[-3000:]
    for index, report in resumed.reports().items():
        assert same_training(reference[index], report) == []
        assert f"resuming at step {older}" in resumed.log(index)
    assert f"the group restores step {older}" in resumed.log(0)


def test_a_worker_without_the_agreed_step_exits_peer_lost(tmp_path, reference):
    group = Group(tmp_path)
    stop(group, 1, SIGTERM, at_step=8)
    assert group.wait() == {0: PEER_STOPPED, 1: PREEMPTED}
    final = newest_step_of_both(group)
    older = group.committed_steps(0)[-2]
    # The chief keeps only the newest, worker 1 only the older: agreed on the
    # older, which the chief does not have.
    shutil.rmtree(group.local_dir(0) / f"ckpt-{older:012d}")
    shutil.rmtree(group.local_dir(1) / f"ckpt-{final:012d}")

    resumed = Group(tmp_path)
    codes = resumed.wait()
    assert codes[0] == PEER_LOST, resumed.log(0)[-3000:]
    assert codes[1] == PEER_LOST, resumed.log(1)[-3000:]
    assert f"has no intact checkpoint of step {older}" in resumed.log(0)
    # Nothing committed was deleted by the failure.
    assert group.committed_steps(0) == [final] and group.committed_steps(1) == [older]


def test_a_worker_whose_group_never_forms_exits_peer_lost(tmp_path):
    started = time.monotonic()
    group = Group(tmp_path, workers=(0,), env={"FTHARNESS_GROUP_TIMEOUT": "3"})
    codes = group.wait(timeout=120)
    print(
        f"\nworker 0 alone, group timeout 3 s -> exit {codes[0]} after "
        f"{time.monotonic() - started:.2f} s (process start included)"
    )
    assert codes == {0: PEER_LOST}, group.log(0)[-3000:]
    lines = [line for line in group.log(0).splitlines() if "did not form within 3 s" in line]
    assert len(lines) == 1, group.log(0)[-3000:]
