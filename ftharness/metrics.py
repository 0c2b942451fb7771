"""Prometheus metrics of the supervisor: over HTTP, or as a node-exporter textfile.

    ftharness supervise --metrics-port 9108 ...              # GET 127.0.0.1:9108/metrics
    ftharness supervise --metrics-textfile /var/lib/node_exporter/ftharness.prom ...

prometheus-client is an optional extra (`pip install 'ftharness[metrics]'`),
imported only when one of these options is given, so the supervisor runs
without it. The metrics live in a registry of their own, never the
process-wide default one: embedding ftharness must not add to, or collide
with, the host program's metrics.

Series (counters restart at zero with each supervisor process, as Prometheus
counters do; `increase()` handles that):

    ftharness_attempt                          the current attempt number
    ftharness_restarts_total{cause}            worker relaunches: cause="crash"
                                               (non-zero exit), "killed" (a signal
                                               the supervisor did not send, e.g. OOM),
                                               and in a group "peer_lost" / "peer_stopped"
    ftharness_preemptions_total                stop signals forwarded (SIGTERM, ...)
    ftharness_last_committed_step              newest committed step
    ftharness_last_commit_timestamp_seconds    its manifest's time
    ftharness_seconds_since_last_commit        computed at each scrape / write
    ftharness_checkpoints_committed_total      checkpoints seen committed
    ftharness_checkpoint_bytes_total           their sizes, from their manifests
    ftharness_final_checkpoint_seconds         stop signal -> worker exit (histogram)
    ftharness_upload_seconds                   one checkpoint upload (histogram)
    ftharness_upload_bytes_total               bytes uploaded

The supervisor measures the final checkpoint only: periodic checkpoints are
written inside the worker's training steps, where it cannot time them.
Uploads are observed by whoever uploads, through `upload_finished()`.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ftharness.events import CommitSeen
from ftharness.policy import Outcome
from ftharness.process import ExitStatus

log = logging.getLogger("ftharness.metrics")

# How often the textfile is rewritten when no event does it.
TEXTFILE_INTERVAL = 10.0
# A group's relaunches, counted apart from crashes (neither spends the crash budget).
PEER_CAUSES = {Outcome.PEER_LOST: "peer_lost", Outcome.PEER_STOPPED: "peer_stopped"}
_DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300, 600)


class MetricsUnavailable(Exception):
    """A metrics option was given, but it cannot be honoured (usage error, 64)."""


@dataclass(frozen=True)
class MetricsConfig:
    port: int | None = None  # HTTP exposition; 0 picks a free port (logged)
    address: str = "127.0.0.1"
    textfile: str | None = None

    def __post_init__(self) -> None:
        if self.port is not None and not 0 <= self.port <= 65535:
            raise ValueError(f"--metrics-port must be in 0..65535, got {self.port}")

    @property
    def enabled(self) -> bool:
        return self.port is not None or self.textfile is not None


def start_metrics(args: argparse.Namespace) -> SupervisorMetrics | NullMetrics:
    """Start the metrics the options ask for; raises MetricsUnavailable.

    The options (--metrics-port, --metrics-address, --metrics-textfile and
    their FTHARNESS_METRICS_* forms) are declared in `cli` with all the others.
    """
    try:
        config = MetricsConfig(args.metrics_port, args.metrics_address, args.metrics_textfile)
    except ValueError as error:
        raise MetricsUnavailable(str(error)) from None
    return SupervisorMetrics.start(config) if config.enabled else NullMetrics()


class NullMetrics:
    """No metrics: every observation is dropped."""

    def attempt_launched(self, attempt: int, pid: int, start: CommitSeen | None) -> None:
        pass

    def checkpoints_committed(self, commits: Sequence[CommitSeen]) -> None:
        pass

    def stop_requested(self, signum: int) -> None:
        pass

    def attempt_ended(
        self,
        status: ExitStatus,
        outcome: Outcome,
        final_step: int | None,
        stop_seconds: float | None,
    ) -> None:
        pass

    def heartbeat(self) -> None:
        pass

    def upload_finished(self, seconds: float, size: int) -> None:
        pass

    def close(self) -> None:
        pass


class SupervisorMetrics:
    """The supervisor's metrics (an `events.AttemptObserver`) and their exporters.

    Example::

        metrics = SupervisorMetrics.start(MetricsConfig(port=9108))
        supervisor = Supervisor(config, lock, metrics=metrics)
        ...
        metrics.close()
    """

    def __init__(self, config: MetricsConfig) -> None:
        try:
            import prometheus_client as prom  # optional extra: only when asked for
        except ImportError:
            raise MetricsUnavailable(
                "--metrics-port / --metrics-textfile need prometheus-client: "
                "pip install 'ftharness[metrics]'"
            ) from None
        self.config = config
        self._prom = prom
        self.registry = registry = prom.CollectorRegistry()
        self.attempt = prom.Gauge(
            "ftharness_attempt", "The current attempt number", registry=registry
        )
        self.restarts = prom.Counter(
            "ftharness_restarts",
            "Worker relaunches, by cause: crash (non-zero exit), killed (a signal the "
            "supervisor did not send), peer_lost / peer_stopped (a group's peer)",
            ["cause"],
            registry=registry,
        )
        for cause in ("crash", "killed", *PEER_CAUSES.values()):
            self.restarts.labels(cause)  # present at 0 before the first restart
        self.preemptions = prom.Counter(
            "ftharness_preemptions",
            "Stop signals (SIGTERM, SIGINT, SIGHUP) forwarded to the worker",
            registry=registry,
        )
        self.last_step = prom.Gauge(
            "ftharness_last_committed_step", "Newest committed step", registry=registry
        )
        self.last_commit_time = prom.Gauge(
            "ftharness_last_commit_timestamp_seconds",
            "Commit time of the newest checkpoint (its manifest's)",
            registry=registry,
        )
        self._last_commit = math.nan
        since = prom.Gauge(
            "ftharness_seconds_since_last_commit",
            "Seconds since the newest checkpoint was committed (NaN before any)",
            registry=registry,
        )
        since.set_function(lambda: time.time() - self._last_commit)
        self.checkpoints = prom.Counter(
            "ftharness_checkpoints_committed",
            "Checkpoints seen committed by the supervisor",
            registry=registry,
        )
        self.checkpoint_bytes = prom.Counter(
            "ftharness_checkpoint_bytes",
            "Bytes of the committed checkpoints (their data files, from the manifests)",
            registry=registry,
        )
        self.final_checkpoint = prom.Histogram(
            "ftharness_final_checkpoint_seconds",
            "From forwarding the stop signal to the worker's exit (final checkpoint + exit)",
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.upload = prom.Histogram(
            "ftharness_upload_seconds",
            "Duration of one checkpoint upload to the remote store",
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.upload_bytes = prom.Counter(
            "ftharness_upload_bytes", "Bytes uploaded to the remote store", registry=registry
        )
        self._server: Any = None
        self._textfile_written = 0.0
        self._textfile_failing = False
        self._restart_cause: str | None = None

    @classmethod
    def start(cls, config: MetricsConfig) -> SupervisorMetrics:
        """Create the metrics and start their exporters."""
        metrics = cls(config)
        if config.port is not None:
            try:
                server, _thread = metrics._prom.start_http_server(
                    config.port, config.address, registry=metrics.registry
                )
            except OSError as error:
                raise MetricsUnavailable(
                    f"cannot serve metrics on {config.address}:{config.port}: {error.strerror}"
                ) from None
            metrics._server = server
            host, port = server.server_address[:2]
            log.info(
                "metrics on http://%s:%d/metrics",
                host,
                port,
                extra={"event": "metrics_serving", "port": port},
            )
        if config.textfile is not None:
            try:
                metrics._prom.write_to_textfile(config.textfile, metrics.registry)
            except OSError as error:
                metrics.close()
                raise MetricsUnavailable(
                    f"cannot write the metrics textfile {config.textfile}: {error.strerror}"
                ) from None
        return metrics

    @property
    def port(self) -> int | None:
        return self._server.server_address[1] if self._server is not None else None

    # -- events.AttemptObserver ---------------------------------------------------

    def attempt_launched(self, attempt: int, pid: int, start: CommitSeen | None) -> None:
        self.attempt.set(attempt)
        if self._restart_cause is not None:
            self.restarts.labels(self._restart_cause).inc()
            self._restart_cause = None
        if start is not None:
            self._set_newest(start)
        self._write_textfile()

    def checkpoints_committed(self, commits: Sequence[CommitSeen]) -> None:
        for commit in commits:
            self.checkpoints.inc()
            self.checkpoint_bytes.inc(commit.bytes)
        if commits:
            self._set_newest(commits[-1])
        self._write_textfile()

    def stop_requested(self, signum: int) -> None:
        self.preemptions.inc()
        self._write_textfile()

    def attempt_ended(
        self,
        status: ExitStatus,
        outcome: Outcome,
        final_step: int | None,
        stop_seconds: float | None,
    ) -> None:
        # Counted when the next attempt launches: a crash the budget does not
        # restart is no restart.
        if outcome is Outcome.CRASHED:
            self._restart_cause = "killed" if status.signal is not None else "crash"
        elif outcome in PEER_CAUSES:
            self._restart_cause = PEER_CAUSES[outcome]
        if stop_seconds is not None and outcome is Outcome.STOPPED:
            self.final_checkpoint.observe(stop_seconds)
        self._write_textfile()

    def heartbeat(self) -> None:
        if time.monotonic() - self._textfile_written >= TEXTFILE_INTERVAL:
            self._write_textfile()

    # -- for the uploader ---------------------------------------------------------

    def upload_finished(self, seconds: float, size: int) -> None:
        """One checkpoint upload took `seconds` and moved `size` bytes."""
        self.upload.observe(seconds)
        self.upload_bytes.inc(size)

    def close(self) -> None:
        self._write_textfile()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- internals ------------------------------------------------------------------

    def _set_newest(self, commit: CommitSeen) -> None:
        self.last_step.set(commit.step)
        self.last_commit_time.set(commit.committed_at)
        self._last_commit = commit.committed_at

    def _write_textfile(self) -> None:
        if self.config.textfile is None:
            return
        self._textfile_written = time.monotonic()
        try:
            # Writes PATH.<pid>.<thread> and renames it: the collector never
            # reads half a file.
            self._prom.write_to_textfile(self.config.textfile, self.registry)
        except OSError as error:
            if not self._textfile_failing:
                log.warning(
                    "cannot write the metrics textfile %s: %s",
                    self.config.textfile,
                    error,
                    extra={"event": "metrics_unwritable"},
                )
            self._textfile_failing = True
            return
        self._textfile_failing = False
