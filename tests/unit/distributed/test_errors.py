"""Which errors mean "a peer is lost", and the one line a worker leaves with."""

from __future__ import annotations

import pickle

import pytest
import tensorflow as tf

from ftharness.distributed.errors import PeerLostError, is_peer_failure, peer_lost
from ftharness.exitcodes import ExitCode


@pytest.mark.parametrize(
    "error",
    [
        tf.errors.UnavailableError(None, None, "Collective ops is aborted by: ... unhealthy"),
        tf.errors.AbortedError(None, None, "tried to connect with a different incarnation"),
        tf.errors.DeadlineExceededError(None, None, "Collective has timed out"),
    ],
)
def test_the_three_collective_failures_are_a_lost_peer(error):
    assert is_peer_failure(error)


@pytest.mark.parametrize(
    "error",
    [
        tf.errors.InvalidArgumentError(None, None, "Incompatible shapes"),
        tf.errors.ResourceExhaustedError(None, None, "OOM"),
        ValueError("a bug in the training step"),
    ],
)
def test_other_errors_are_the_users_own(error):
    assert not is_peer_failure(error)


def test_the_message_is_one_line_with_the_code_and_survives_pickling():
    error = peer_lost(
        tf.errors.UnavailableError(None, None, "tasks are unhealthy\nmore detail\nand more"),
        "in a training step",
    )
    assert isinstance(error, PeerLostError) and error.exit_code == ExitCode.PEER_LOST == 76
    assert "\n" not in error.message
    assert (
        "UnavailableError: tasks are unhealthy" in error.message and "exiting 76" in error.message
    )
    assert pickle.loads(pickle.dumps(error)).message == error.message
