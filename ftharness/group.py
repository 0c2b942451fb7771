"""A worker's place in a multi-worker group, from TF_CONFIG or a Kubernetes index.

MultiWorkerMirroredStrategy learns the group from the `TF_CONFIG` environment
variable (`{"cluster": {"worker": ["host:port", ...]}, "task": {"type":
"worker", "index": 0}}`). On plain VMs the user writes it; in a Kubernetes
Indexed Job or JobSet every Pod runs the same spec, so it is built here from
the Pod's `JOB_COMPLETION_INDEX`, a peer host pattern with an `{index}` field
(the stable names a headless Service gives, e.g. `trainer-{index}.trainer` for
an Indexed Job, `train-workers-0-{index}.train` for a JobSet), a port and the
worker count.

The chief follows TensorFlow's own rule (multi_worker_util.is_chief): task 0
of the "chief" job if the cluster has one, else worker 0. Only the chief's
supervisor may hold the backup lease and write to the backup URL.

Pure: no TensorFlow import, no I/O beyond reading the mapping it is given.
"""

from __future__ import annotations

import dataclasses
import json
import string
from collections.abc import Mapping

# The environment's names are defined once, with the others, in config.py.
from ftharness.config import (
    ENV_JOB_COMPLETION_INDEX,
    ENV_PEER_HOST_PATTERN,
    ENV_PEER_PORT,
    ENV_TF_CONFIG,
    ENV_WORKER_COUNT,
)

# The jobs MultiWorkerMirroredStrategy trains with; "evaluator" stands apart
# (it is not in the collectives) and parameter servers are another strategy.
TRAINING_JOBS = ("chief", "worker")
KNOWN_JOBS = ("chief", "worker", "evaluator", "ps")


class GroupConfigError(ValueError):
    """The group description is unusable; `source` names where it came from."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason

    def __reduce__(self):  # crosses process boundaries intact
        return (type(self), (self.source, self.reason))


@dataclasses.dataclass(frozen=True)
class GroupPlace:
    """One task of a training cluster: the whole cluster and which task this is.

    `cluster` maps each job name to its tasks' "host:port" addresses, in
    index order (a tuple of pairs so that the dataclass stays hashable).
    """

    cluster: tuple[tuple[str, tuple[str, ...]], ...]
    task_type: str
    task_index: int

    @property
    def jobs(self) -> dict[str, tuple[str, ...]]:
        return dict(self.cluster)

    @property
    def worker_count(self) -> int:
        """Tasks that train together (the chief trains too), as TensorFlow counts them."""
        jobs = self.jobs
        if self.task_type == "evaluator":
            return len(jobs["evaluator"])
        return sum(len(jobs.get(job, ())) for job in TRAINING_JOBS)

    @property
    def id_in_cluster(self) -> int:
        """0 .. worker_count - 1, chief first (TensorFlow's multi_worker_util.id_in_cluster)."""
        if self.task_type == "worker" and "chief" in self.jobs:
            return self.task_index + len(self.jobs["chief"])
        return self.task_index

    @property
    def is_chief(self) -> bool:
        if self.task_type == "chief":
            return True
        if self.task_type == "worker":
            return "chief" not in self.jobs and self.task_index == 0
        # The evaluator is a chief of its own cluster; parameter servers never are.
        return self.task_type == "evaluator"

    @property
    def is_multi_worker(self) -> bool:
        return self.worker_count > 1

    @property
    def address(self) -> str:
        return self.jobs[self.task_type][self.task_index]

    def to_tf_config(self) -> str:
        """The TF_CONFIG value that makes TensorFlow see this same place."""
        return json.dumps(
            {
                "cluster": {job: list(addresses) for job, addresses in self.cluster},
                "task": {"type": self.task_type, "index": self.task_index},
            },
            sort_keys=True,
        )


def parse_tf_config(text: str, *, source: str = ENV_TF_CONFIG) -> GroupPlace:
    """Validate a TF_CONFIG value; raise GroupConfigError saying what is wrong."""
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise GroupConfigError(
            source, f"not valid JSON ({error.msg} at char {error.pos})"
        ) from None
    if not isinstance(config, dict):
        raise GroupConfigError(source, "must be a JSON object with 'cluster' and 'task'")
    cluster = _parse_cluster(config.get("cluster"), source)
    task = config.get("task")
    if not isinstance(task, dict):
        raise GroupConfigError(source, "has no 'task' object (which task is this process?)")
    task_type = task.get("type")
    if not isinstance(task_type, str) or not task_type:
        raise GroupConfigError(source, 'task.type must be a job name such as "worker"')
    task_index = task.get("index", 0)
    # bool is an int in Python; `"index": true` is a mistake, not task 1.
    if isinstance(task_index, bool) or not isinstance(task_index, int):
        raise GroupConfigError(source, f"task.index must be an integer, not {task_index!r}")
    jobs = dict(cluster)
    if task_type not in jobs:
        raise GroupConfigError(
            source, f"task.type {task_type!r} is not a job in cluster ({', '.join(jobs)})"
        )
    if not 0 <= task_index < len(jobs[task_type]):
        raise GroupConfigError(
            source,
            f"task.index {task_index} is out of range: job {task_type!r} has "
            f"{len(jobs[task_type])} task(s)",
        )
    if not any(job in jobs for job in TRAINING_JOBS):
        raise GroupConfigError(source, "cluster has neither a 'chief' nor a 'worker' job")
    if len(jobs.get("chief", ())) > 1:
        raise GroupConfigError(source, "cluster has more than one chief")
    return GroupPlace(cluster=cluster, task_type=task_type, task_index=task_index)


def _parse_cluster(cluster: object, source: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if not isinstance(cluster, dict) or not cluster:
        raise GroupConfigError(source, "has no 'cluster' object mapping job names to addresses")
    parsed = []
    seen: dict[str, str] = {}
    for job, addresses in cluster.items():
        if job not in KNOWN_JOBS:
            raise GroupConfigError(
                source, f"unknown job {job!r} in cluster (known: {', '.join(KNOWN_JOBS)})"
            )
        # TensorFlow also accepts {index: address} for sparse jobs; a training
        # group is never sparse, so only lists are accepted.
        if not isinstance(addresses, list) or not addresses:
            raise GroupConfigError(source, f"cluster.{job} must be a non-empty list of host:port")
        for address in addresses:
            _check_address(address, f"cluster.{job}", source)
            if address in seen:
                raise GroupConfigError(
                    source, f"address {address} appears twice (in {seen[address]} and {job})"
                )
            seen[address] = job
        parsed.append((job, tuple(addresses)))
    return tuple(parsed)


def _check_address(address: object, where: str, source: str) -> None:
    if not isinstance(address, str):
        raise GroupConfigError(source, f"{where}: {address!r} is not a host:port string")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise GroupConfigError(source, f"{where}: {address!r} is not host:port")


def place_from_index(
    index: int | str,
    *,
    worker_count: int,
    host_pattern: str,
    port: int,
    source: str = ENV_JOB_COMPLETION_INDEX,
) -> GroupPlace:
    """The place of Pod `index` in a group of `worker_count` Pods (worker 0 is chief).

    `host_pattern` must contain `{index}` and no other field, e.g.
    "trainer-{index}.trainer" (Indexed Job with a headless Service named
    "trainer" as the Pod subdomain) or "train-workers-0-{index}.train" (JobSet
    "train", replicatedJob "workers", with the JobSet's default subdomain).
    """
    if isinstance(worker_count, bool) or not isinstance(worker_count, int) or worker_count < 1:
        raise GroupConfigError("worker count", f"must be an integer >= 1, not {worker_count!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise GroupConfigError("peer port", f"must be 1..65535, not {port!r}")
    _check_host_pattern(host_pattern)
    parsed_index = _parse_index(index, source)
    if parsed_index >= worker_count:
        raise GroupConfigError(
            source, f"index {parsed_index} is out of range for {worker_count} worker(s)"
        )
    addresses = tuple(f"{host_pattern.format(index=i)}:{port}" for i in range(worker_count))
    return GroupPlace(cluster=(("worker", addresses),), task_type="worker", task_index=parsed_index)


def _parse_index(index: int | str, source: str) -> int:
    if isinstance(index, bool):
        raise GroupConfigError(source, f"must be a non-negative integer, not {index!r}")
    if isinstance(index, str):
        # Only plain decimal digits: int() would also take " 1", "+1" and non-ASCII digits.
        if not (index.isascii() and index.isdigit()):
            raise GroupConfigError(source, f"must be a non-negative integer, not {index!r}")
        return int(index)
    if not isinstance(index, int) or index < 0:
        raise GroupConfigError(source, f"must be a non-negative integer, not {index!r}")
    return index


def _check_host_pattern(pattern: object) -> None:
    source = "peer host pattern"
    if not isinstance(pattern, str) or not pattern:
        raise GroupConfigError(source, "is empty")
    try:
        fields = [
            field for _, field, _, _ in string.Formatter().parse(pattern) if field is not None
        ]
    except ValueError as error:
        raise GroupConfigError(source, f"{pattern!r}: {error}") from None
    if fields.count("index") != 1 or len(fields) != 1:
        raise GroupConfigError(
            source, f"{pattern!r} must contain {{index}} exactly once and no other field"
        )
    if ":" in pattern or "/" in pattern or any(c.isspace() for c in pattern):
        raise GroupConfigError(
            source, f"{pattern!r} must be a host name only (the port is separate)"
        )


def place_from_environ(
    environ: Mapping[str, str],
    *,
    host_pattern: str | None = None,
    port: int | None = None,
    worker_count: int | None = None,
) -> GroupPlace | None:
    """This process's place, or None when it trains alone.

    TF_CONFIG wins when set (the user or an operator wrote it). Otherwise a
    group is built from JOB_COMPLETION_INDEX when a host pattern is given (as
    an argument or FTHARNESS_PEER_HOST_PATTERN); then the port and worker count
    are required. A host pattern without JOB_COMPLETION_INDEX is an error, not
    a silent single-worker run.
    """
    tf_config = environ.get(ENV_TF_CONFIG)
    if tf_config is not None and tf_config.strip():
        return parse_tf_config(tf_config)
    host_pattern = host_pattern if host_pattern is not None else environ.get(ENV_PEER_HOST_PATTERN)
    if host_pattern is None:
        return None
    if ENV_JOB_COMPLETION_INDEX not in environ:
        raise GroupConfigError(
            ENV_JOB_COMPLETION_INDEX,
            "not set, but a peer host pattern is (run in an Indexed Job or JobSet, "
            "or set TF_CONFIG)",
        )
    return place_from_index(
        environ[ENV_JOB_COMPLETION_INDEX],
        worker_count=_int_setting(worker_count, environ, ENV_WORKER_COUNT),
        host_pattern=host_pattern,
        port=_int_setting(port, environ, ENV_PEER_PORT),
    )


def worker_tf_config(place: GroupPlace, environ: Mapping[str, str]) -> str:
    """The TF_CONFIG a worker at `place` gets: the one given, unchanged (it may
    hold fields ftharness does not read, such as "rpc_layer"), else the built one."""
    given = environ.get(ENV_TF_CONFIG)
    if given is not None and given.strip():
        return given
    return place.to_tf_config()


def _int_setting(value: int | None, environ: Mapping[str, str], name: str) -> int:
    if value is not None:
        return value
    text = environ.get(name)
    if text is None:
        raise GroupConfigError(name, "required with a peer host pattern")
    if not (text.isascii() and text.isdigit()):
        raise GroupConfigError(name, f"must be a positive integer, not {text!r}")
    return int(text)
