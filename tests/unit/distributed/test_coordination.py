"""The private TensorFlow API ftharness relies on is still where it was.

If one of these fails after a TensorFlow upgrade, ftharness.distributed.coordination
needs updating (and says so in one line to its users until then).
"""

from __future__ import annotations

import pickle

import keras
import tensorflow as tf

from ftharness.distributed import coordination, worker_group
from ftharness.distributed.timeouts import PeerTimeouts


def test_the_coordination_service_api_is_available():
    coordination.check_available()
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2

    fields = coordination_config_pb2.CoordinationServiceConfig.DESCRIPTOR.fields_by_name
    assert "cluster_register_with_barrier" in fields
    assert "heartbeat_timeout_in_ms" in fields


def test_a_moved_api_is_one_line_naming_what_is_missing():
    error = coordination.CoordinationUnavailableError("tensorflow.python.eager.context.X")
    assert "\n" not in str(error) and "tensorflow.python.eager.context.X" in str(error)
    assert str(pickle.loads(pickle.dumps(error))) == str(error)


def test_objects_built_outside_any_strategy_make_no_group():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    strategy = worker_group.strategy_of({"model": model, "step": tf.Variable(1)})
    assert strategy is None
    assert worker_group.group_of(strategy, PeerTimeouts()) is None
