"""The peer and group timeouts a worker reads from its supervisor's variables."""

from __future__ import annotations

import pytest

from ftharness.config import (
    DEFAULT_GROUP_TIMEOUT,
    DEFAULT_PEER_TIMEOUT,
    ENV_GROUP_TIMEOUT,
    ENV_PEER_TIMEOUT,
)
from ftharness.distributed.timeouts import PeerTimeouts


def test_unset_variables_give_the_coordination_services_default_and_fifteen_minutes():
    timeouts = PeerTimeouts.from_environ({})
    assert (
        (timeouts.peer, timeouts.group)
        == (DEFAULT_PEER_TIMEOUT, DEFAULT_GROUP_TIMEOUT)
        == (
            10.0,
            900.0,
        )
    )


def test_seconds_are_read_as_plain_decimal_numbers():
    timeouts = PeerTimeouts.from_environ({ENV_PEER_TIMEOUT: "2.5", ENV_GROUP_TIMEOUT: "60"})
    assert (timeouts.peer, timeouts.group) == (2.5, 60.0)


@pytest.mark.parametrize("value", ["0", "-1", "ten", "nan", "inf"])
def test_a_bad_value_is_refused_naming_the_variable(value):
    with pytest.raises(ValueError, match=ENV_PEER_TIMEOUT):
        PeerTimeouts.from_environ({ENV_PEER_TIMEOUT: value})


def test_waits_for_a_peers_answer_outlast_a_lost_heartbeat():
    assert PeerTimeouts(peer=3).exchange == 60.0
    assert PeerTimeouts(peer=30).exchange == 180.0
