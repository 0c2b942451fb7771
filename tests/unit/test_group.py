"""The worker's place in a group: TF_CONFIG parsing and building it for Kubernetes."""

from __future__ import annotations

import json
import pickle

import pytest

from ftharness import config, group
from ftharness.group import (
    GroupConfigError,
    GroupPlace,
    parse_tf_config,
    place_from_environ,
    place_from_index,
    worker_tf_config,
)


def tf_config(cluster, task_type="worker", index=0):
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


TWO_WORKERS = {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]}


def test_worker_zero_is_chief_without_a_chief_job():
    first = parse_tf_config(tf_config(TWO_WORKERS, index=0))
    second = parse_tf_config(tf_config(TWO_WORKERS, index=1))
    assert (first.is_chief, second.is_chief) == (True, False)
    assert (first.id_in_cluster, second.id_in_cluster) == (0, 1)
    assert second.address == "10.0.0.2:2222"
    assert second.worker_count == 2 and second.is_multi_worker


def test_the_chief_job_outranks_worker_zero_and_counts_as_a_worker():
    cluster = {"chief": ["c:1"], "worker": ["w0:1", "w1:1"]}
    chief = parse_tf_config(tf_config(cluster, "chief", 0))
    worker0 = parse_tf_config(tf_config(cluster, "worker", 0))
    assert chief.is_chief and not worker0.is_chief
    assert worker0.worker_count == 3
    # TensorFlow numbers the chief first: worker i is id i + 1.
    assert (chief.id_in_cluster, worker0.id_in_cluster) == (0, 1)


def test_the_index_defaults_to_zero_and_extra_keys_are_ignored():
    text = json.dumps({"cluster": TWO_WORKERS, "task": {"type": "worker"}, "rpc_layer": "grpc"})
    assert parse_tf_config(text).task_index == 0


def test_a_single_worker_is_not_multi_worker():
    place = parse_tf_config(tf_config({"worker": ["localhost:1234"]}))
    assert place.is_chief and not place.is_multi_worker


def test_round_trips_through_tf_config():
    place = parse_tf_config(tf_config({"chief": ["c:1"], "worker": ["w:2"]}, "worker", 0))
    assert parse_tf_config(place.to_tf_config()) == place


def test_places_are_frozen_and_hashable():
    place = parse_tf_config(tf_config(TWO_WORKERS))
    with pytest.raises(AttributeError):
        place.task_index = 1  # type: ignore[misc]
    assert len({place, parse_tf_config(tf_config(TWO_WORKERS))}) == 1


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "must be a JSON object"),
        (json.dumps({"task": {"type": "worker", "index": 0}}), "no 'cluster'"),
        (json.dumps({"cluster": TWO_WORKERS}), "no 'task'"),
        (tf_config(TWO_WORKERS, index=2), "task.index 2 is out of range: job 'worker' has 2"),
        (tf_config(TWO_WORKERS, index=-1), "task.index -1 is out of range"),
        (tf_config(TWO_WORKERS, index="1"), "task.index must be an integer"),
        (tf_config(TWO_WORKERS, index=True), "task.index must be an integer"),
        (tf_config(TWO_WORKERS, task_type="chief"), "'chief' is not a job in cluster"),
        (tf_config(TWO_WORKERS, task_type=""), "task.type must be a job name"),
        (tf_config({"worker": []}), "non-empty list"),
        (tf_config({"worker": {"0": "a:1"}}), "non-empty list"),
        (tf_config({"worker": ["a:1", "a:1"]}), "appears twice"),
        (tf_config({"worker": ["a"]}), "is not host:port"),
        (tf_config({"worker": ["a:0"]}), "is not host:port"),
        (tf_config({"worker": ["a:70000"]}), "is not host:port"),
        (tf_config({"worker": [1234]}), "is not a host:port string"),
        (tf_config({"trainer": ["a:1"]}, "trainer"), "unknown job 'trainer'"),
        (tf_config({"evaluator": ["a:1"]}, "evaluator"), "neither a 'chief' nor a 'worker'"),
        (tf_config({"chief": ["a:1", "b:1"]}, "chief"), "more than one chief"),
    ],
)
def test_bad_tf_config_is_a_clear_value_error(text, reason):
    with pytest.raises(ValueError, match=r"^TF_CONFIG: ") as caught:
        parse_tf_config(text)
    assert reason in str(caught.value)
    assert isinstance(caught.value, GroupConfigError) and caught.value.source == "TF_CONFIG"


def test_the_error_keeps_its_facts_across_pickling():
    error = GroupConfigError("TF_CONFIG", "not valid JSON")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.source, copy.reason, str(copy)) == (error.source, error.reason, str(error))


def test_indexed_job_pod_builds_the_group_from_its_index():
    place = place_from_index("1", worker_count=3, host_pattern="trainer-{index}.trainer", port=2222)
    assert place.jobs == {
        "worker": ("trainer-0.trainer:2222", "trainer-1.trainer:2222", "trainer-2.trainer:2222")
    }
    assert (place.task_type, place.task_index, place.is_chief) == ("worker", 1, False)
    assert place.address == "trainer-1.trainer:2222"


def test_jobset_pod_names_fit_the_pattern():
    place = place_from_index(
        0, worker_count=2, host_pattern="train-workers-0-{index}.train", port=1
    )
    assert place.is_chief
    assert place.jobs["worker"] == ("train-workers-0-0.train:1", "train-workers-0-1.train:1")


def test_a_built_group_is_what_tensorflow_would_read():
    place = place_from_index(1, worker_count=2, host_pattern="w{index}.svc", port=2222)
    assert json.loads(place.to_tf_config()) == {
        "cluster": {"worker": ["w0.svc:2222", "w1.svc:2222"]},
        "task": {"type": "worker", "index": 1},
    }


@pytest.mark.parametrize(
    ("kwargs", "source", "reason"),
    [
        ({"index": "2"}, "JOB_COMPLETION_INDEX", "index 2 is out of range for 2 worker(s)"),
        ({"index": "-1"}, "JOB_COMPLETION_INDEX", "non-negative integer"),
        ({"index": " 1"}, "JOB_COMPLETION_INDEX", "non-negative integer"),
        ({"index": ""}, "JOB_COMPLETION_INDEX", "non-negative integer"),
        ({"index": -1}, "JOB_COMPLETION_INDEX", "non-negative integer"),
        ({"index": True}, "JOB_COMPLETION_INDEX", "non-negative integer"),
        ({"worker_count": 0}, "worker count", ">= 1"),
        ({"port": 0}, "peer port", "1..65535"),
        ({"port": 65536}, "peer port", "1..65535"),
        ({"host_pattern": "trainer.svc"}, "peer host pattern", "{index} exactly once"),
        ({"host_pattern": "t-{index}-{index}"}, "peer host pattern", "{index} exactly once"),
        ({"host_pattern": "t-{index}.{ns}"}, "peer host pattern", "no other field"),
        ({"host_pattern": "t-{index"}, "peer host pattern", "t-{index"),
        ({"host_pattern": "t-{index}:2222"}, "peer host pattern", "host name only"),
        ({"host_pattern": ""}, "peer host pattern", "is empty"),
    ],
)
def test_bad_index_settings_are_clear_value_errors(kwargs, source, reason):
    arguments = {"index": "0", "worker_count": 2, "host_pattern": "t-{index}.svc", "port": 2222}
    arguments.update(kwargs)
    index = arguments.pop("index")
    with pytest.raises(ValueError) as caught:
        place_from_index(index, **arguments)
    assert caught.value.source == source
    assert reason in str(caught.value)


def test_environ_without_any_group_is_a_single_worker():
    assert place_from_environ({}) is None
    assert place_from_environ({"TF_CONFIG": "  "}) is None


def test_environ_tf_config_wins_over_the_index():
    environ = {
        "TF_CONFIG": tf_config(TWO_WORKERS, index=1),
        "JOB_COMPLETION_INDEX": "0",
        "FTHARNESS_PEER_HOST_PATTERN": "t-{index}.svc",
    }
    assert place_from_environ(environ) == parse_tf_config(environ["TF_CONFIG"])


def test_environ_builds_from_ftharness_settings():
    environ = {
        "JOB_COMPLETION_INDEX": "1",
        "FTHARNESS_PEER_HOST_PATTERN": "t-{index}.svc",
        "FTHARNESS_PEER_PORT": "2222",
        "FTHARNESS_WORKER_COUNT": "2",
    }
    place = place_from_environ(environ)
    assert place == GroupPlace((("worker", ("t-0.svc:2222", "t-1.svc:2222")),), "worker", 1)


def test_arguments_take_precedence_over_ftharness_settings():
    environ = {
        "JOB_COMPLETION_INDEX": "0",
        "FTHARNESS_PEER_HOST_PATTERN": "env-{index}.svc",
        "FTHARNESS_PEER_PORT": "1",
        "FTHARNESS_WORKER_COUNT": "5",
    }
    place = place_from_environ(environ, host_pattern="arg-{index}.svc", port=2, worker_count=2)
    assert place.jobs["worker"] == ("arg-0.svc:2", "arg-1.svc:2")


@pytest.mark.parametrize(
    ("environ", "source"),
    [
        ({"FTHARNESS_PEER_HOST_PATTERN": "t-{index}"}, "JOB_COMPLETION_INDEX"),
        (
            {"JOB_COMPLETION_INDEX": "0", "FTHARNESS_PEER_HOST_PATTERN": "t-{index}"},
            "FTHARNESS_WORKER_COUNT",
        ),
        (
            {
                "JOB_COMPLETION_INDEX": "0",
                "FTHARNESS_PEER_HOST_PATTERN": "t-{index}",
                "FTHARNESS_WORKER_COUNT": "2",
            },
            "FTHARNESS_PEER_PORT",
        ),
        (
            {
                "JOB_COMPLETION_INDEX": "0",
                "FTHARNESS_PEER_HOST_PATTERN": "t-{index}",
                "FTHARNESS_WORKER_COUNT": "two",
                "FTHARNESS_PEER_PORT": "1",
            },
            "FTHARNESS_WORKER_COUNT",
        ),
        ({"TF_CONFIG": "{"}, "TF_CONFIG"),
    ],
)
def test_environ_incomplete_settings_name_the_missing_one(environ, source):
    with pytest.raises(GroupConfigError) as caught:
        place_from_environ(environ)
    assert caught.value.source == source


def test_the_worker_gets_the_tf_config_it_was_given_unchanged_else_the_built_one():
    # Fields ftharness does not read (rpc_layer, environment) reach TensorFlow.
    given = json.dumps(
        {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1},
         "rpc_layer": "grpc"}
    )  # fmt: skip
    place = place_from_environ({"TF_CONFIG": given})
    assert worker_tf_config(place, {"TF_CONFIG": given}) == given
    built = place_from_index(1, worker_count=2, host_pattern="w-{index}.w", port=2222)
    assert json.loads(worker_tf_config(built, {"TF_CONFIG": "  "})) == {
        "cluster": {"worker": ["w-0.w:2222", "w-1.w:2222"]},
        "task": {"type": "worker", "index": 1},
    }


def test_the_environments_names_are_the_ones_config_defines():
    assert group.ENV_PEER_HOST_PATTERN is config.ENV_PEER_HOST_PATTERN
    assert (config.ENV_PEER_PORT, config.ENV_WORKER_COUNT) == (
        "FTHARNESS_PEER_PORT", "FTHARNESS_WORKER_COUNT",
    )  # fmt: skip
