"""A lost peer, told apart from the user's own errors.

When a worker of the group dies, the survivors' next collective fails: with
UnavailableError once the coordination service's heartbeat times out ("tasks
are unhealthy (stopped sending heartbeats)"), AbortedError when the dead
worker's replacement registers first ("unexpectedly tried to connect with a
different incarnation"), or DeadlineExceededError when a collective's own
timeout (`CommunicationOptions(timeout_seconds=...)`) runs out first
(measured: docs/design/multi-worker.md, 1). Under a group these three mean
"relaunch with the group": the worker exits PEER_LOST without saving, since
its in-memory state may be in the middle of a step.
"""

from __future__ import annotations

import tensorflow as tf

from ftharness.exitcodes import ExitCode
from ftharness.worker import WorkerError

PEER_FAILURES = (
    tf.errors.UnavailableError,
    tf.errors.AbortedError,
    tf.errors.DeadlineExceededError,
)


class PeerLostError(WorkerError):
    """A peer of the group is gone (or never came): relaunch with the group."""

    exit_code = ExitCode.PEER_LOST


def is_peer_failure(error: BaseException) -> bool:
    return isinstance(error, PEER_FAILURES)


def peer_lost(error: BaseException, where: str) -> PeerLostError:
    """The one line a worker leaves with when `error` (a collective's) ended `where`."""
    text = str(getattr(error, "message", None) or error)
    return PeerLostError(
        f"a peer of the group was lost {where} ({type(error).__name__}: {_cause(text)[:300]}); "
        f"exiting {int(ExitCode.PEER_LOST)} (peer lost) to be relaunched with the group"
    )


def _cause(text: str) -> str:
    """The line of a TensorFlow error that says what happened.

    An error raised inside a `tf.function` (the usual training step) starts
    with TensorFlow's preamble, "Graph execution error:" and "Detected at
    node ... defined at (most recent call last):" with indented stack
    lines, before the collective's own message ("Collective ops is aborted
    by: ... The following tasks are unhealthy (stopped sending
    heartbeats):", then the task): measured with TensorFlow 2.21. The
    preamble is skipped; a line ending with ":" is joined to the next one.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and lines[0].strip() == "Graph execution error:":
        lines = lines[1:]
        if lines and lines[0].startswith("Detected at node"):
            lines = lines[1:]
            while lines and lines[0][:1].isspace():
                lines = lines[1:]
    if not lines:
        return ""
    cause = lines[0].strip()
    if cause.endswith(":") and len(lines) > 1 and not lines[1][:1].isspace():
        cause = f"{cause} {lines[1].strip()}"
    return cause
