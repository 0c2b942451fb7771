"""WorkerSession's retention: the final checkpoint leaves its deletion to the next run.

Real signals to this process, a real checkpoint directory.
"""

from __future__ import annotations

import os
import signal

import pytest

from ftharness.checkpoint.local import LocalCheckpointStore
from ftharness.worker import WorkerSession


@pytest.fixture(autouse=True)
def unsupervised(monkeypatch):
    for name in [n for n in os.environ if n.startswith("FTHARNESS_")]:
        monkeypatch.delenv(name)


def commit(session: WorkerSession, step: int) -> None:
    session.commit(step=step, epoch=0, batch=step, files={"state.json": [b"{}"]})


def steps(directory) -> list[int]:
    return [ref.step for ref in LocalCheckpointStore(directory).list_committed()]


def test_after_a_stop_signal_commits_keep_one_more_and_the_next_run_prunes(tmp_path):
    session = WorkerSession.open(tmp_path, keep=2)
    session.flags.install()
    try:
        for step in (1, 2, 3):
            commit(session, step)
        assert steps(tmp_path) == [2, 3]
        os.kill(os.getpid(), signal.SIGTERM)  # the handler only records it
        assert session.stopping
        commit(session, 4)  # the final checkpoint: nothing deleted
        assert steps(tmp_path) == [2, 3, 4]
        commit(session, 5)  # another commit while stopping: still at most keep + 1
        assert steps(tmp_path) == [3, 4, 5]
    finally:
        session.close()
    resumed = WorkerSession.open(tmp_path, keep=2)
    try:
        assert not resumed.stopping
        commit(resumed, 6)
        assert steps(tmp_path) == [5, 6]
    finally:
        resumed.close()


def test_a_stop_signal_under_keep_1_still_keeps_the_newest_and_one_before(tmp_path):
    session = WorkerSession.open(tmp_path, keep=1)
    session.flags.install()
    try:
        commit(session, 1)
        os.kill(os.getpid(), signal.SIGTERM)
        commit(session, 2)
        assert steps(tmp_path) == [1, 2]
    finally:
        session.close()
