"""TensorFlow's coordination service: the one place ftharness touches its private API.

MultiWorkerMirroredStrategy starts the coordination service (a key-value
store and a heartbeat, served by the chief's process) but exposes neither:
both live in `tensorflow.python.eager.context`, and the service's
configuration proto in the XLA/TSL package. ftharness uses them for three
things: setting the heartbeat and register timeouts before the strategy is
built, agreeing on steps (restore, stop) and handing each worker's part of
a checkpoint to the chief. Nothing else in ftharness imports them, so a
TensorFlow that moved them fails here, at once, with one clear line.

Relied on (TensorFlow 2.21, `tensorflow/python/eager/context.py`):
- `context().configure_coordination_service(service_type, service_leader,
  enable_health_check, cluster_register_timeout_in_ms, heartbeat_timeout_in_ms,
  ..., coordinated_jobs=[CoordinatedJob])`, which keeps the config proto it
  built as `context().coordination_service` (we add
  `cluster_register_with_barrier` to it); MWMS configures the service itself
  only if nobody did (`collective_all_reduce_strategy.py`:
  `if context.context().coordination_service is None`).
- `set_config_key_value(key, value)`: AlreadyExistsError if the key is set.
- `get_config_key_value(key, timeout_in_ms)`: blocks until set;
  DeadlineExceededError after the timeout (0 would wait for ever).
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from ftharness.group import GroupPlace

try:  # private APIs, on purpose in one place (see above)
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context as _context

    _MISSING = None
    for _name in ("configure_coordination_service", "set_config_key_value",
                  "get_config_key_value"):  # fmt: skip
        if not hasattr(_context.Context, _name):
            _MISSING = f"tensorflow.python.eager.context.Context.{_name}"
except ImportError as _error:  # pragma: no cover - depends on the TensorFlow release
    _MISSING = str(_error)


class CoordinationUnavailableError(RuntimeError):
    """This TensorFlow does not offer the coordination-service API ftharness uses."""

    def __init__(self, missing: str) -> None:
        super().__init__(
            f"ftharness's multi-worker support needs TensorFlow's coordination service API, "
            f"which this TensorFlow {tf.__version__} does not have ({missing}); "
            "use a TensorFlow release ftharness supports (2.21)"
        )
        self.missing = missing

    def __reduce__(self):
        return (type(self), (self.missing,))


def check_available() -> None:
    if _MISSING is not None:
        raise CoordinationUnavailableError(_MISSING)


def is_configured() -> bool:
    """True once the coordination service is configured in this process."""
    check_available()
    return _context.context().coordination_service is not None


def configure(place: GroupPlace, *, heartbeat_timeout: float, register_timeout: float) -> None:
    """Configure the service as MWMS would, with our timeouts; before the strategy is built.

    The leader is the chief (or worker 0), as
    `multi_worker_util.coordination_leader` picks it.
    """
    check_available()
    jobs = [job for job in ("chief", "worker") if job in place.jobs]
    leader_job = "chief" if "chief" in place.jobs else "worker"
    _context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=f"/job:{leader_job}/replica:0/task:0",
        heartbeat_timeout_in_ms=_milliseconds(heartbeat_timeout),
        cluster_register_timeout_in_ms=_milliseconds(register_timeout),
        coordinated_jobs=[
            coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(place.jobs[job]))
            for job in jobs
        ],
    )
    # Without the barrier a task whose peers (or leader) never come waits in
    # the strategy's constructor for ever, whatever the register timeout
    # (measured: > 60 s with 4 s set). With it, every task fails with
    # DeadlineExceededError once the timeout passes (measured: the leader
    # alone after 5 s with 4 s set, another task alone after 9 s). The
    # Python function has no argument for it: set on the config it made.
    _context.context().coordination_service.cluster_register_with_barrier = True


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))


@dataclass(frozen=True)
class KeyValueStore:
    """The group's key-value store (in the leader's process, empty for each new group)."""

    def put(self, key: str, value: str) -> str:
        """Set `key` unless set; the value it holds afterwards (ours, or the first one's)."""
        check_available()
        try:
            _context.context().set_config_key_value(key, value)
        except tf.errors.AlreadyExistsError:
            return self.get(key, timeout=10.0)
        return value

    def get(self, key: str, *, timeout: float) -> str:
        """The value of `key`, waiting at most `timeout` s: DeadlineExceededError after."""
        check_available()
        return _context.context().get_config_key_value(key, timeout_in_ms=_milliseconds(timeout))
