"""The coordinated stop: a stop anywhere is a final checkpoint everywhere, at one step.

PreemptionCheckpointHandler's protocol (tensorflow/python/distribute/
failure_handling/failure_handling.py) with ftharness's save and exit:

1. A watcher thread in every worker waits for `ftharness/stop_step`.
2. The worker told to stop (SIGTERM, at the end of its step S) sets it to
   S + 1 and waits until every worker acknowledged (`ftharness/stop_ack/<id>`).
   A peer may already be inside step S + 1, blocked in its all-reduce until
   this worker joins: S + 1 is the first step every worker can still stop
   after. Two workers stopped at once: the key is create-only, the second
   reads the first one's value.
3. Every worker trains until its step equals the agreed one, saves and exits.

Why the acknowledgements: the stopped worker joins step S + 1 only once
every peer's watcher has the value, so no peer can pass step S + 1's end
without knowing it must stop there (synchronous all-reduce keeps the workers
within one step of each other).
"""

from __future__ import annotations

import logging
import threading
import time

import tensorflow as tf

from ftharness.distributed.errors import PeerLostError
from ftharness.distributed.worker_group import WorkerGroup

log = logging.getLogger("ftharness.distributed")

STOP_KEY = "ftharness/stop_step"
ACK_KEY = "ftharness/stop_ack/{worker}"
# The watcher asks the store in slices this long, so that it ends soon after close().
POLL_SECONDS = 1.0


class StopAgreement:
    """Watches for a group stop; announces one. `agreed_step` once one is known."""

    def __init__(self, group: WorkerGroup) -> None:
        self._group = group
        self._agreed: int | None = None
        self._known = threading.Event()
        self._closed = threading.Event()
        self._watcher = threading.Thread(
            target=self._watch, name="ftharness-stop-watcher", daemon=True
        )
        self._watcher.start()

    @property
    def agreed_step(self) -> int | None:
        return self._agreed if self._known.is_set() else None

    def announce(self, step: int) -> int:
        """This worker was told to stop after `step`: agree on the group's stop step.

        Returns the agreed step; PeerLostError if a peer does not acknowledge
        in time (it is gone: nothing the group could save together).
        """
        started = time.monotonic()
        agreed = int(self._group.store.put(STOP_KEY, str(step + 1)))
        self._learn(agreed)
        deadline = started + self._group.timeouts.exchange
        for worker in self._group.peer_ids:
            remaining = deadline - time.monotonic()
            try:
                self._group.store.get(ACK_KEY.format(worker=worker), timeout=max(remaining, 0.001))
            except tf.errors.DeadlineExceededError:
                raise PeerLostError(
                    f"worker {worker} did not acknowledge the group's stop at step {agreed} "
                    f"within {self._group.timeouts.exchange:g} s; exiting 76 (peer lost)"
                ) from None
        log.info(
            "stop agreed at step %d by all %d workers in %.3f s",
            agreed,
            self._group.worker_count,
            time.monotonic() - started,
        )
        return agreed

    def close(self) -> None:
        self._closed.set()

    def _learn(self, agreed: int) -> None:
        if not self._known.is_set():
            self._agreed = agreed
            self._known.set()

    def _watch(self) -> None:
        while not self._closed.is_set():
            try:
                value = self._group.store.get(STOP_KEY, timeout=POLL_SECONDS)
            except tf.errors.DeadlineExceededError:
                continue
            except Exception as error:  # the leader is gone: training fails on its own
                log.debug("stop watcher ends: %s", type(error).__name__)
                return
            self._learn(int(value))
            try:
                self._group.store.put(ACK_KEY.format(worker=self._group.worker_id), "1")
            except Exception as error:  # as above
                log.debug("stop acknowledgement failed: %s", type(error).__name__)
            log.info("the group stops at step %s", value)
            return
