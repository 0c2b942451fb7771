"""`multi_worker_strategy()`: MultiWorkerMirroredStrategy with ftharness's timeouts.

Left to itself the strategy's coordination service waits 10 s for a silent
peer (its heartbeat), and a worker whose peers never come waits in the
constructor for ever (measured: docs/design/multi-worker.md). Here the
heartbeat is the supervisor's `--peer-timeout`, and the constructor is
bounded by `--group-timeout`: past it the worker exits PEER_LOST. The
service's own `cluster_register_timeout_in_ms` is set too, but a task
waiting for an absent leader does not honour it (measured: > 60 s with 4 s
set, and SIGTERM not acted on meanwhile), hence the watchdog.
"""

from __future__ import annotations

import logging
import os
import threading

import tensorflow as tf

from ftharness import group
from ftharness.distributed import coordination
from ftharness.distributed.errors import is_peer_failure, peer_lost
from ftharness.distributed.timeouts import PeerTimeouts
from ftharness.exitcodes import ExitCode
from ftharness.logs import print_error
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
    watchdog = threading.Timer(timeouts.group, _group_never_formed, args=(timeouts.group,))
    watchdog.daemon = True
    watchdog.start()
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(**kwargs)
    except Exception as error:
        if not is_peer_failure(error):
            raise
        exit_with(peer_lost(error, "while the group formed"))
    finally:
        watchdog.cancel()


def _group_never_formed(timeout: float) -> None:
    # The main thread is blocked in TensorFlow's C++ (no Python runs there
    # until it returns): leave from here.
    print_error(
        f"the group did not form within {timeout:g} s (FTHARNESS_GROUP_TIMEOUT): a peer is "
        f"missing; exiting {int(ExitCode.PEER_LOST)} (peer lost)"
    )
    os._exit(ExitCode.PEER_LOST)
