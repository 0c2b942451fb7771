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


# The message of a peer's loss in a `tf.function`, as TensorFlow 2.21 raises it
# (two workers, one SIGKILLed, FTHARNESS_PEER_TIMEOUT=3).
GRAPH_EXECUTION_ERROR = (
    "Graph execution error:\n\nDetected at node CollectiveReduceV2 defined at (most recent "
    'call last):\n  File "/tmp/w.py", line 14, in <module>\n\n  File "/tmp/w.py", line 10, '
    "in step\n\nCollective ops is aborted by: Error reported from /job:worker/task:1: The "
    "following tasks are unhealthy (stopped sending heartbeats):\n/job:worker/replica:0/task:1"
    "\nThe tasks have crashed. Check the task logs for an earlier error, or scheduler events "
    "(e.g. preemption, eviction) to debug further.\nThe error could be from a previous "
    "operation. Restart your program to reset.\n\t [[{{node CollectiveReduceV2}}]] "
    "[Op:__inference_step_39]"
)


def test_the_line_of_an_error_in_a_tf_function_is_its_cause_not_the_preamble():
    error = peer_lost(
        tf.errors.UnavailableError(None, None, GRAPH_EXECUTION_ERROR), "in a training step"
    )
    assert "Graph execution error" not in error.message and "\n" not in error.message
    assert (
        "(UnavailableError: Collective ops is aborted by: Error reported from "
        "/job:worker/task:1: The following tasks are unhealthy (stopped sending heartbeats): "
        "/job:worker/replica:0/task:1); exiting 76"
    ) in error.message


def test_an_empty_message_still_gives_one_line():
    error = peer_lost(tf.errors.AbortedError(None, None, ""), "at the end of step 3")
    assert error.message.startswith("a peer of the group was lost at the end of step 3 (")
    assert "\n" not in error.message
