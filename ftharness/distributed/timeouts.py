"""How long a worker waits for its peers, as its supervisor set it.

The supervisor passes `--peer-timeout` (the coordination service's heartbeat
timeout: a peer silent this long is lost) and `--group-timeout` (how long a
worker waits for its peers to join the group) through
`config.WorkerEnvironment`; a worker run alone gets the same defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ftharness.config import DEFAULT_GROUP_TIMEOUT, DEFAULT_PEER_TIMEOUT, WorkerEnvironment


@dataclass(frozen=True)
class PeerTimeouts:
    peer: float = DEFAULT_PEER_TIMEOUT
    group: float = DEFAULT_GROUP_TIMEOUT

    @property
    def exchange(self) -> float:
        """How long a worker waits for a peer's answer during training (a stop's
        acknowledgement, a checkpoint part): a step, a checkpoint write and a
        lost heartbeat, with room to spare."""
        return max(60.0, 6 * self.peer)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> PeerTimeouts:
        """ValueError naming the variable for a bad value."""
        worker = WorkerEnvironment.from_environ(environ)
        return cls(
            peer=worker.peer_timeout if worker.peer_timeout is not None else DEFAULT_PEER_TIMEOUT,
            group=(
                worker.group_timeout if worker.group_timeout is not None else DEFAULT_GROUP_TIMEOUT
            ),
        )
