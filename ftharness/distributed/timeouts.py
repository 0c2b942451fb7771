"""How long a worker waits for its peers, as its supervisor sets it.

`FTHARNESS_PEER_TIMEOUT` (the coordination service's heartbeat timeout: a
peer silent this long is lost) and `FTHARNESS_GROUP_TIMEOUT` (how long a
worker waits for its peers to join the group), in seconds. Until the
supervisor's `config.WorkerEnvironment` carries them, they are read here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from ftharness.config import parse_duration

ENV_PEER_TIMEOUT = "FTHARNESS_PEER_TIMEOUT"
ENV_GROUP_TIMEOUT = "FTHARNESS_GROUP_TIMEOUT"
# The coordination service's own heartbeat default (10 s), and 15 minutes for
# a whole group to come back (a preempted node replaced, an image pulled).
DEFAULT_PEER_TIMEOUT = 10.0
DEFAULT_GROUP_TIMEOUT = 15 * 60.0


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
        environ = os.environ if environ is None else environ

        def seconds(name: str, default: float) -> float:
            text = environ.get(name)
            if text in (None, ""):
                return default
            return parse_duration(text, name=name, minimum=0.0, allow_minimum=False)

        return cls(
            peer=seconds(ENV_PEER_TIMEOUT, DEFAULT_PEER_TIMEOUT),
            group=seconds(ENV_GROUP_TIMEOUT, DEFAULT_GROUP_TIMEOUT),
        )
