"""Configuration as frozen dataclasses, and the FTHARNESS_* environment.

The supervisor passes everything the worker needs through environment
variables, so that any training program, in any framework, can follow the
protocol by reading them (see the README's "Worker protocol").
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ftharness.exitcodes import DEFAULT_FATAL_EXIT_CODES
from ftharness.notices import NoticeConfig

# Set by the supervisor for the worker.
ENV_CHECKPOINT_DIR = "FTHARNESS_CHECKPOINT_DIR"  # local checkpoint directory
ENV_BACKUP_URL = "FTHARNESS_BACKUP_URL"  # where backups are kept (may be remote)
ENV_RUN_ID = "FTHARNESS_RUN_ID"
ENV_ATTEMPT = "FTHARNESS_ATTEMPT"  # 1 for the first launch
ENV_KEEP = "FTHARNESS_KEEP"
ENV_STOP_BUDGET = "FTHARNESS_STOP_BUDGET"  # seconds the worker has after a stop signal
ENV_LOCK_FD = "FTHARNESS_LOCK_FD"  # inherited descriptor holding the directory lock
ENV_SUPERVISOR_PID = "FTHARNESS_SUPERVISOR_PID"


def is_local_url(url: str) -> bool:
    """True for a plain path or a file:// URL."""
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> Path:
    return Path(url.removeprefix("file://")).expanduser()


@dataclass(frozen=True)
class RestartPolicyConfig:
    max_restarts: int = 5
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    backoff_multiplier: float = 2.0
    fatal_exit_codes: frozenset[int] = DEFAULT_FATAL_EXIT_CODES

    def __post_init__(self) -> None:
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
    keep: int = 2
    grace_period: float = 30.0
    grace_margin: float = 5.0
    restart: RestartPolicyConfig = field(default_factory=RestartPolicyConfig)
    notices: NoticeConfig = field(default_factory=NoticeConfig)
    # fsspec options of the backup URL's filesystem (endpoint, credentials
    # file, anon, ...). Never logged: they may hold secrets.
    storage_options: dict = field(default_factory=dict, repr=False)
    lease_ttl: float = 60.0
    lease_wait: float = 90.0  # how long to wait for another run's lease to expire
    # How often the supervisor looks for newly committed checkpoints.
    watch_interval: float = 1.0

    def __post_init__(self) -> None:
        if not self.command:
            raise ValueError("no command given after --")
        if self.keep < 1:
            raise ValueError(f"--keep must be >= 1, got {self.keep}")
        if self.grace_period <= 0:
            raise ValueError(f"--grace-period must be > 0, got {self.grace_period}")
        if not 0 <= self.grace_margin < self.grace_period:
            raise ValueError("--grace-margin must be >= 0 and below --grace-period")
        if self.lease_ttl <= 0 or self.lease_wait < 0:
            raise ValueError("--lease-ttl must be > 0 and --lease-wait >= 0")

    @property
    def replicated(self) -> bool:
        """True when the backup URL is not the local directory itself."""
        if not is_local_url(self.backup_url):
            return True
        return local_path(self.backup_url).resolve() != self.local_dir.resolve()

    @property
    def final_checkpoint_budget(self) -> float:
        """Seconds the worker gets after SIGTERM, leaving the margin for us."""
        return self.grace_period - self.grace_margin


@dataclass(frozen=True)
class WorkerEnvironment:
    """What a worker learns from its supervisor; all None when run alone."""

    checkpoint_dir: Path | None = None
    backup_url: str | None = None
    run_id: str | None = None
    attempt: int = 1
    keep: int | None = None
    stop_budget: float | None = None
    lock_fd: int | None = None
    supervisor_pid: int | None = None

    @property
    def supervised(self) -> bool:
        return self.supervisor_pid is not None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> WorkerEnvironment:
        environ = os.environ if environ is None else environ

        def number(name: str, kind: type):
            value = environ.get(name)
            if value in (None, ""):
                return None
            try:
                return kind(value)
            except ValueError:
                raise ValueError(f"{name}={value!r} is not a valid {kind.__name__}") from None

        directory = environ.get(ENV_CHECKPOINT_DIR)
        return cls(
            checkpoint_dir=Path(directory) if directory else None,
            backup_url=environ.get(ENV_BACKUP_URL) or None,
            run_id=environ.get(ENV_RUN_ID) or None,
            attempt=number(ENV_ATTEMPT, int) or 1,
            keep=number(ENV_KEEP, int),
            stop_budget=number(ENV_STOP_BUDGET, float),
            lock_fd=number(ENV_LOCK_FD, int),
            supervisor_pid=number(ENV_SUPERVISOR_PID, int),
        )

    def to_environ(self) -> dict[str, str]:
        values = {
            ENV_CHECKPOINT_DIR: self.checkpoint_dir,
            ENV_BACKUP_URL: self.backup_url,
            ENV_RUN_ID: self.run_id,
            ENV_ATTEMPT: self.attempt,
            ENV_KEEP: self.keep,
            ENV_STOP_BUDGET: self.stop_budget,
            ENV_LOCK_FD: self.lock_fd,
            ENV_SUPERVISOR_PID: self.supervisor_pid,
        }
        return {name: str(value) for name, value in values.items() if value is not None}
