"""Configuration as frozen dataclasses, and the FTHARNESS_* environment.

The supervisor passes everything the worker needs through environment
variables, so that any training program, in any framework, can follow the
protocol by reading them (docs/supervise.md, "Worker protocol").
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ftharness.exitcodes import DEFAULT_FATAL_EXIT_CODES
from ftharness.logs import LOG_FORMATS, LOG_LEVELS
from ftharness.notices import NoticeConfig

if TYPE_CHECKING:
    from ftharness.group import GroupPlace

# Set by the supervisor for the worker; read by ftharness/worker.py unless noted.
ENV_CHECKPOINT_DIR = "FTHARNESS_CHECKPOINT_DIR"  # local checkpoint directory
ENV_RUN_ID = "FTHARNESS_RUN_ID"  # names the run in the directory lock
ENV_KEEP = "FTHARNESS_KEEP"  # committed checkpoints to keep
ENV_LOCK_FD = "FTHARNESS_LOCK_FD"  # inherited descriptor holding the directory lock
# For the training program itself (not read by ftharness): 1 for the first launch.
ENV_ATTEMPT = "FTHARNESS_ATTEMPT"
# The supervisor's own --log-format / --log-level, passed on: one event
# stream, in one format, from the supervisor and its worker.
ENV_LOG_FORMAT = "FTHARNESS_LOG_FORMAT"
ENV_LOG_LEVEL = "FTHARNESS_LOG_LEVEL"
# TensorFlow's C++ logging, quieter by default in the worker (2: errors only).
ENV_TF_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"
DEFAULT_TF_LOG_LEVEL = "2"

# A multi-worker group (ftharness/group.py reads the first five). TensorFlow's
# own description of the group: the user's, or the one the supervisor built;
# passed to the worker either way.
ENV_TF_CONFIG = "TF_CONFIG"
# Set by the Job controller in every Pod of an Indexed Job (JobSet's Jobs are
# Indexed Jobs too): the Pod's index, 0 .. completions - 1.
ENV_JOB_COMPLETION_INDEX = "JOB_COMPLETION_INDEX"
# The supervisor's --peer-host-pattern, --peer-port, --worker-count: how to
# build TF_CONFIG from JOB_COMPLETION_INDEX (the options take precedence).
ENV_PEER_HOST_PATTERN = "FTHARNESS_PEER_HOST_PATTERN"
ENV_PEER_PORT = "FTHARNESS_PEER_PORT"
ENV_WORKER_COUNT = "FTHARNESS_WORKER_COUNT"
# The supervisor's --peer-timeout and --group-timeout, and (the same names)
# what its worker reads to configure TensorFlow's coordination service: in
# seconds, a plain decimal number ("10", "2.5").
ENV_PEER_TIMEOUT = "FTHARNESS_PEER_TIMEOUT"
ENV_GROUP_TIMEOUT = "FTHARNESS_GROUP_TIMEOUT"
# The coordination service's heartbeat timeout (TensorFlow's default) and how
# long a relaunched worker waits for its peers to register.
DEFAULT_PEER_TIMEOUT = 10.0
DEFAULT_GROUP_TIMEOUT = 900.0
# TensorFlow takes both in milliseconds: a shorter timeout is no timeout.
MIN_GROUP_DURATION = 0.001

# Committed checkpoints kept, when nobody says otherwise (supervisor and worker).
DEFAULT_KEEP = 2
# The longest any duration option may be: a day. Longer is a typo, not a plan.
MAX_DURATION = 86400.0


def is_local_url(url: str) -> bool:
    """True for a plain path or a file:// URL."""
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> Path:
    return Path(url.removeprefix("file://")).expanduser()


@dataclass(frozen=True)
class BackupLocation:
    """The backup URL, resolved once: where it is and whether it is local."""

    url: str
    is_local: bool
    local_path: Path | None  # the directory, for a local location

    @classmethod
    def parse(cls, url: str) -> BackupLocation:
        """Raises ValueError for an empty location (`""`, `file://`)."""
        if not url or not url.strip():
            raise ValueError("the backup location is empty")
        if not is_local_url(url):
            return cls(url, False, None)
        path = url.removeprefix("file://")
        if not path:
            # `file://` alone would mean the current directory: surely a mistake.
            raise ValueError(f"{url!r} names no directory")
        return cls(url, True, Path(path).expanduser())


def parse_duration(
    text: str, *, name: str, minimum: float = 0.0, allow_minimum: bool = True
) -> float:
    """A number of seconds, finite and within [minimum, MAX_DURATION]; else ValueError."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number of seconds, got {text!r}") from None
    low_ok = value >= minimum if allow_minimum else value > minimum
    if not math.isfinite(value) or not low_ok or value > MAX_DURATION:
        bound = ">=" if allow_minimum else ">"
        raise ValueError(
            f"{name} must be a finite number of seconds {bound} {minimum:g} "
            f"and <= {MAX_DURATION:g}, got {text!r}"
        )
    return value


def format_seconds(value: float) -> str:
    """A duration as a plain decimal number, to the millisecond: "10", "2.5"."""
    return f"{value:.3f}".rstrip("0").rstrip(".")


def default_local_dir(backup_url: str) -> Path:
    """A cache directory of its own for each remote backup URL."""
    digest = hashlib.sha256(backup_url.encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "ftharness" / digest


ENV_STORAGE_OPTIONS = "FTHARNESS_STORAGE_OPTIONS"


def storage_options_from_environment(environ: Mapping[str, str] | None = None) -> dict:
    """FTHARNESS_STORAGE_OPTIONS, a JSON object; ValueError otherwise."""
    environ = os.environ if environ is None else environ
    text = environ.get(ENV_STORAGE_OPTIONS)
    if not text:
        return {}
    try:
        options = json.loads(text)
    except ValueError:
        raise ValueError(f"{ENV_STORAGE_OPTIONS} must be a JSON object") from None
    if not isinstance(options, dict):
        raise ValueError(f"{ENV_STORAGE_OPTIONS} must be a JSON object")
    return options


def parse_storage_options(items: Sequence[str], environ: Mapping[str, str] | None = None) -> dict:
    """`KEY=VALUE` pairs (VALUE as JSON when it parses) over FTHARNESS_STORAGE_OPTIONS.

    A malformed item is named by its position, never echoed: it may be a secret.
    """
    options = storage_options_from_environment(environ)
    for number, item in enumerate(items or [], start=1):
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise ValueError(
                f"--storage-option number {number} is not KEY=VALUE (its text is not shown: "
                "it may hold a secret)"
            )
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def _check_duration(value: float, name: str, *, allow_zero: bool = True) -> None:
    parse_duration(str(value), name=name, allow_minimum=allow_zero)


@dataclass(frozen=True)
class RestartPolicyConfig:
    max_restarts: int = 5
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    backoff_multiplier: float = 2.0
    fatal_exit_codes: frozenset[int] = DEFAULT_FATAL_EXIT_CODES

    def __post_init__(self) -> None:
        _check_duration(self.backoff_initial, "--backoff-initial")
        _check_duration(self.backoff_max, "--backoff-max")
        if not math.isfinite(self.backoff_multiplier) or self.backoff_multiplier > 1000:
            raise ValueError("the backoff multiplier must be a finite number in 1..1000")
        if self.max_restarts < 0:
            raise ValueError(f"--max-restarts must be >= 0, got {self.max_restarts}")
        if self.backoff_initial < 0 or self.backoff_max < self.backoff_initial:
            raise ValueError("backoff must satisfy 0 <= --backoff-initial <= --backoff-max")
        if self.backoff_multiplier < 1:
            raise ValueError("the backoff multiplier must be >= 1")


@dataclass(frozen=True)
class SupervisorConfig:
    command: tuple[str, ...]
    backup_url: str
    local_dir: Path
    run_id: str
    keep: int = DEFAULT_KEEP
    grace_period: float = 30.0
    grace_margin: float = 5.0
    restart: RestartPolicyConfig = field(default_factory=RestartPolicyConfig)
    notices: NoticeConfig = field(default_factory=NoticeConfig)
    # fsspec options of the backup URL's filesystem (endpoint, credentials
    # file, anon, ...). Never logged: they may hold secrets.
    storage_options: dict = field(default_factory=dict, repr=False)
    lease_ttl: float = 60.0
    lease_wait: float = 90.0  # how long to wait for another run's lease to expire
    log_format: str = "text"
    log_level: str = "INFO"
    # How often the supervisor looks for newly committed checkpoints.
    watch_interval: float = 1.0
    # The worker's place in a multi-worker group (None: it trains alone), and
    # the two timeouts its worker gives TensorFlow's coordination service.
    group: GroupPlace | None = None
    peer_timeout: float = DEFAULT_PEER_TIMEOUT
    group_timeout: float = DEFAULT_GROUP_TIMEOUT

    def __post_init__(self) -> None:
        if not self.command:
            raise ValueError("no command given after --")
        if self.keep < 1:
            raise ValueError(f"--keep must be >= 1, got {self.keep}")
        _check_duration(self.grace_period, "--grace-period", allow_zero=False)
        _check_duration(self.grace_margin, "--grace-margin")
        _check_duration(self.lease_ttl, "--lease-ttl", allow_zero=False)
        _check_duration(self.lease_wait, "--lease-wait")
        _check_duration(self.watch_interval, "watch_interval", allow_zero=False)
        if self.grace_period <= 0:
            raise ValueError(f"--grace-period must be > 0, got {self.grace_period}")
        if not 0 <= self.grace_margin < self.grace_period:
            raise ValueError("--grace-margin must be >= 0 and below --grace-period")
        if self.lease_ttl <= 0 or self.lease_wait < 0:
            raise ValueError("--lease-ttl must be > 0 and --lease-wait >= 0")
        for name, value in (("--peer-timeout", self.peer_timeout),
                            ("--group-timeout", self.group_timeout)):  # fmt: skip
            parse_duration(str(value), name=name, minimum=MIN_GROUP_DURATION)
        if self.group is not None and not self.is_chief and not self.replicated:
            # Its worker's checkpoints would land in the backup itself.
            raise ValueError(
                f"this worker (task {self.group.task_type} {self.group.task_index}) is not the "
                "group's chief: it needs a --local-dir of its own, apart from --backup-dir"
            )

    @property
    def location(self) -> BackupLocation:
        return BackupLocation.parse(self.backup_url)

    @property
    def replicated(self) -> bool:
        """True when the backup URL is not the local directory itself."""
        location = self.location
        return not location.is_local or location.local_path.resolve() != self.local_dir.resolve()

    @property
    def is_chief(self) -> bool:
        """The writer of the backup URL: the group's chief, or a worker alone."""
        return self.group is None or self.group.is_chief

    @property
    def in_group(self) -> bool:
        """Training with peers: their stops and losses end this worker's attempts too."""
        return self.group is not None and self.group.is_multi_worker

    @property
    def final_checkpoint_budget(self) -> float:
        """Seconds the worker gets after SIGTERM, leaving the margin for us."""
        return self.grace_period - self.grace_margin


@dataclass(frozen=True)
class WorkerEnvironment:
    """What a worker learns from its supervisor; all None when run alone.

    Only what a worker uses is sent: the directory, the run id (for the
    lock's record), `keep`, the inherited lock descriptor, and the attempt
    number (for the training program, e.g. to inject a fault only once).
    In a multi-worker group, also TF_CONFIG and the coordination service's
    two timeouts (`ftharness.tf.multi_worker_strategy` reads them).
    """

    checkpoint_dir: Path | None = None
    run_id: str | None = None
    keep: int | None = None
    lock_fd: int | None = None
    attempt: int = 1
    log_format: str | None = None  # None: text, at INFO
    log_level: str | None = None
    tf_config: str | None = None  # the group, as TensorFlow reads it
    peer_timeout: float | None = None  # seconds; None: TensorFlow's default
    group_timeout: float | None = None

    @property
    def supervised(self) -> bool:
        return self.checkpoint_dir is not None and self.lock_fd is not None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> WorkerEnvironment:
        environ = os.environ if environ is None else environ

        def number(name: str) -> int | None:
            value = environ.get(name)
            if value in (None, ""):
                return None
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"{name}={value!r} is not a valid int") from None

        def seconds(name: str) -> float | None:
            value = environ.get(name)
            if value in (None, ""):
                return None
            return parse_duration(value, name=name, minimum=MIN_GROUP_DURATION)

        def choice(name: str, choices: tuple[str, ...]) -> str | None:
            value = environ.get(name) or None
            if value is not None and value not in choices:
                raise ValueError(f"{name}={value!r} is not one of {', '.join(choices)}")
            return value

        directory = environ.get(ENV_CHECKPOINT_DIR)
        return cls(
            checkpoint_dir=Path(directory) if directory else None,
            run_id=environ.get(ENV_RUN_ID) or None,
            keep=number(ENV_KEEP),
            lock_fd=number(ENV_LOCK_FD),
            attempt=number(ENV_ATTEMPT) or 1,
            log_format=choice(ENV_LOG_FORMAT, LOG_FORMATS),
            log_level=choice(ENV_LOG_LEVEL, LOG_LEVELS),
            tf_config=environ.get(ENV_TF_CONFIG) or None,
            peer_timeout=seconds(ENV_PEER_TIMEOUT),
            group_timeout=seconds(ENV_GROUP_TIMEOUT),
        )

    def to_environ(self) -> dict[str, str]:
        values = {
            ENV_CHECKPOINT_DIR: self.checkpoint_dir,
            ENV_RUN_ID: self.run_id,
            ENV_KEEP: self.keep,
            ENV_LOCK_FD: self.lock_fd,
            ENV_ATTEMPT: self.attempt,
            ENV_LOG_FORMAT: self.log_format,
            ENV_LOG_LEVEL: self.log_level,
            ENV_TF_CONFIG: self.tf_config,
        }
        environ = {name: str(value) for name, value in values.items() if value is not None}
        for name, value in ((ENV_PEER_TIMEOUT, self.peer_timeout),
                            (ENV_GROUP_TIMEOUT, self.group_timeout)):  # fmt: skip
            if value is not None:
                environ[name] = format_seconds(value)
        return environ


def worker_environ(base: Mapping[str, str], worker: WorkerEnvironment) -> dict[str, str]:
    """The worker's whole environment: ours, a quieter TensorFlow, the protocol."""
    environ = dict(base)
    environ.setdefault(ENV_TF_LOG_LEVEL, DEFAULT_TF_LOG_LEVEL)
    # A stale protocol variable from an outer run must not leak into this one.
    # (TF_CONFIG stays: when we have no group, there is none, or it is blank.)
    stale = (ENV_CHECKPOINT_DIR, ENV_RUN_ID, ENV_KEEP, ENV_LOCK_FD, ENV_ATTEMPT,
             ENV_PEER_TIMEOUT, ENV_GROUP_TIMEOUT)  # fmt: skip
    for name in stale:
        environ.pop(name, None)
    environ.update(worker.to_environ())
    return environ
