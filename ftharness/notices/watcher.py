"""Which sources to poll, a one-shot poll, and the watcher thread."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ftharness.notices.aws import AwsImdsSource
from ftharness.notices.gce import GceMetadataSource
from ftharness.notices.http import MetadataSource
from ftharness.notices.notice import NoticeConfig, PreemptionNotice

logger = logging.getLogger("ftharness.notices")


def _candidate_sources(config: NoticeConfig) -> list[MetadataSource]:
    sources: list[MetadataSource] = []
    if config.kind in ("gce", "auto"):
        sources.append(GceMetadataSource(config.gce_base_url, config.timeout))
    if config.kind in ("aws", "auto"):
        sources.append(AwsImdsSource(config.aws_base_url, config.timeout))
    return sources


def _select_sources(config: NoticeConfig) -> list[MetadataSource]:
    """The sources to poll. Under `auto`, each candidate is probed once and
    only those that answer are kept: the other cloud's server will never
    appear, and polling it would cost a timeout every interval."""
    candidates = _candidate_sources(config)
    if config.kind != "auto":
        return candidates
    answering = [source for source in candidates if source.probe()]
    if answering:
        logger.info(
            "preemption notices: auto selected %s",
            ", ".join(source.name for source in answering),
        )
    else:
        logger.warning(
            "preemption notices: auto found no metadata server (tried gce at %s, aws at %s); "
            "relying on SIGTERM alone",
            config.gce_base_url,
            config.aws_base_url,
        )
    return answering


def poll_once(config: NoticeConfig) -> PreemptionNotice | None:
    """One synchronous check of the configured sources; the first notice, or None.

    Never raises for polling failures (they are logged). Under `auto` this
    probes first, so each call costs up to two probes.
    """
    for source in _select_sources(config):
        notice = source.check()
        if notice is not None:
            return notice
    return None


class NoticeWatcher:
    """Background thread: polls the sources every `poll_interval`; on the first
    notice from a source calls `on_notice(notice)` once (not again for the same
    ongoing notice).

    A notice ends when a poll of that source succeeds without one; a failed
    poll does not end it. A later notice from the source is then reported
    again. `on_notice` runs in the watcher thread and must be thread-safe (the
    supervisor writes to a pipe). An exception from it is logged and polling
    goes on. The thread is a daemon: it never keeps the process alive.

    Example::

        watcher = NoticeWatcher(NoticeConfig(kind="gce"), on_notice=queue.put)
        watcher.start()
        ...
        watcher.stop()
    """

    def __init__(self, config: NoticeConfig, on_notice: Callable[[PreemptionNotice], None]) -> None:
        self._config = config
        self._on_notice = on_notice
        # stop() sets this; the thread sleeps on it, so stopping never waits
        # out a poll interval.
        self._stop_requested = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start polling in a daemon thread (nothing to start for kind "none")."""
        if self._thread is not None:
            raise RuntimeError("NoticeWatcher.start() was already called")
        if self._config.kind == "none":
            return
        self._thread = threading.Thread(
            target=self._run, name=f"ftharness-notices-{self._config.kind}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the thread to stop and wait up to `timeout` seconds for it.

        A poll in flight finishes first (at most the configured request
        timeout per request); the thread is a daemon, so one that outlives the
        wait cannot block interpreter exit.
        """
        self._stop_requested.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning(
                    "preemption notices: watcher still busy after %.1f s; leaving it", timeout
                )

    def _run(self) -> None:
        sources = _select_sources(self._config)
        ongoing = {source.name: False for source in sources}
        while sources and not self._stop_requested.is_set():
            for source in sources:
                answered, notice = source.poll()
                if notice is None:
                    if answered:
                        ongoing[source.name] = False
                    continue
                if ongoing[source.name]:
                    continue
                ongoing[source.name] = True
                self._deliver(notice)
            self._stop_requested.wait(self._config.poll_interval)

    def _deliver(self, notice: PreemptionNotice) -> None:
        # The receiver logs the notice: it knows what it does about it.
        try:
            self._on_notice(notice)
        except Exception:
            logger.exception("preemption notices: on_notice raised; polling continues")
