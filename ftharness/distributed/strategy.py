"""`multi_worker_strategy()`: MultiWorkerMirroredStrategy with ftharness's timeouts.

Left to itself the strategy's coordination service waits 10 s for a silent
peer (its heartbeat), and a worker whose peers never come waits in the
constructor for ever (measured: docs/design/multi-worker.md), blocked in
TensorFlow's C++ with the GIL held: no Python thread or signal handler runs
meanwhile, so no watchdog of ours could help. Here the heartbeat is the
supervisor's `--peer-timeout`, and the service's register barrier is bounded
by `--group-timeout` (`coordination.configure`): past it the constructor
raises DeadlineExceededError and the worker exits PEER_LOST.
"""

from __future__ import annotations

import logging
import os

import tensorflow as tf

from ftharness import group
from ftharness.distributed import coordination
from ftharness.distributed.errors import PeerLostError, is_peer_failure
from ftharness.distributed.timeouts import PeerTimeouts
from ftharness.exitcodes import ExitCode
from ftharness.worker import ConfigurationError, exit_with

log = logging.getLogger("ftharness.distributed")


def multi_worker_strategy(**kwargs) -> tf.distribute.MultiWorkerMirroredStrategy:
    """`tf.distribute.MultiWorkerMirroredStrategy(**kwargs)`, bounded and configured.

    Reads TF_CONFIG (as the strategy does) and FTHARNESS_PEER_TIMEOUT /
    FTHARNESS_GROUP_TIMEOUT (seconds; the supervisor sets them). A bad
    setting exits 64, a group that does not form in time exits 76, in one line.
    """
    try:
        timeouts = PeerTimeouts.from_environ()
        place = group.place_from_environ({"TF_CONFIG": os.environ.get("TF_CONFIG", "")})
        coordination.check_available()
    except (ValueError, coordination.CoordinationUnavailableError) as error:
        exit_with(ConfigurationError(str(error)))
    if place is not None and place.is_multi_worker and not coordination.is_configured():
        coordination.configure(
            place, heartbeat_timeout=timeouts.peer, register_timeout=timeouts.group
        )
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(**kwargs)
    except Exception as error:
        if not is_peer_failure(error):
            raise
        exit_with(
            PeerLostError(
                f"the group did not form within {timeouts.group:g} s (FTHARNESS_GROUP_TIMEOUT): "
                f"a peer is missing ({type(error).__name__}); exiting "
                f"{int(ExitCode.PEER_LOST)} (peer lost)"
            )
        )
