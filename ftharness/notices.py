"""Cloud preemption notices: ask the GCE or AWS metadata server whether the
machine is about to be taken away.

A SIGTERM gives the worker the grace period to write a final checkpoint; a
cloud notice can come earlier (AWS announces spot interruptions two minutes
ahead, GCE sets `instance/maintenance-event` before host maintenance), so the
supervisor polls for one and asks the worker to checkpoint soon while it keeps
training.

`NoticeWatcher` polls in a daemon thread and calls `on_notice` once per
notice; `poll_once` makes one synchronous check. Polling failures never raise:
the metadata server is a hint, not a dependency, and a job must not die
because a hint is unavailable. Each source logs a given kind of failure once
(to the "ftharness.notices" logger), not on every poll.

Only the standard library is used (urllib), with short timeouts.

Example::

    config = NoticeConfig(kind="auto")
    watcher = NoticeWatcher(config, on_notice=lambda notice: wake_pipe.write(b"n"))
    watcher.start()
    ...
    watcher.stop()
"""

from __future__ import annotations

import datetime
import http.client
import json
import logging
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from typing import IO

__all__ = [
    "NOTICE_KINDS",
    "AwsImdsSource",
    "GceMetadataSource",
    "NoticeConfig",
    "NoticeWatcher",
    "PreemptionNotice",
    "poll_once",
]

logger = logging.getLogger("ftharness.notices")

NOTICE_KINDS: tuple[str, ...] = ("none", "gce", "aws", "auto")

GCE_DEFAULT_BASE_URL = "http://metadata.google.internal"
AWS_DEFAULT_BASE_URL = "http://169.254.169.254"

# Metadata answers are a few bytes; a bound keeps a misbehaving server (or
# whatever answers in its place) from making us read megabytes every poll.
_MAX_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class PreemptionNotice:
    """The cloud says this machine is going away.

    Args:
        source: "gce" or "aws".
        detail: human text, e.g. "instance/preempted=TRUE".
        deadline: `time.time()` seconds at which termination is expected, when
            the source says (AWS does; GCE does not: None).
    """

    source: str
    detail: str
    deadline: float | None


@dataclass(frozen=True)
class NoticeConfig:
    """Which metadata server to poll, how often, and where it lives.

    Args:
        kind: "none" (poll nothing), "gce", "aws", or "auto" (probe both once,
            keep the one that answers).
        poll_interval: seconds between polls.
        timeout: seconds allowed for each HTTP request.
        gce_base_url: the GCE metadata server (tests point it at 127.0.0.1).
        aws_base_url: the AWS instance metadata service.
    """

    kind: str = "none"
    poll_interval: float = 5.0
    timeout: float = 1.0
    gce_base_url: str = GCE_DEFAULT_BASE_URL
    aws_base_url: str = AWS_DEFAULT_BASE_URL

    def __post_init__(self) -> None:
        if self.kind not in NOTICE_KINDS:
            raise ValueError(
                f"preemption notice kind must be one of {', '.join(NOTICE_KINDS)}; "
                f"got {self.kind!r}"
            )
        if not self.poll_interval > 0:
            raise ValueError(f"poll_interval must be > 0 seconds; got {self.poll_interval!r}")
        if not self.timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds; got {self.timeout!r}")
        for name in ("gce_base_url", "aws_base_url"):
            _validate_base_url(name, getattr(self, name))


def _validate_base_url(name: str, url: str) -> None:
    # urllib also opens file:// and ftp:// URLs; a metadata server is HTTP.
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{name} must be an http:// or https:// URL; got {url!r}")


# --------------------------------------------------------------------------
# HTTP plumbing shared by the sources


class _PollError(Exception):
    """One failed poll. `kind` groups failures for logging once per kind."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class _Response:
    status: int
    headers: Message
    body: bytes


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A metadata server never redirects. Following one would let another host
    # supply the answer, so a 3xx surfaces as an unexpected status instead.
    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Message,
        newurl: str,
    ) -> urllib.request.Request | None:
        return None


def _build_opener() -> urllib.request.OpenerDirector:
    # No proxies: the metadata server is link-local and answers only requests
    # sent straight to it. urllib's default opener would honour http_proxy
    # from the environment, which training images often set.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)


def _fetch(
    opener: urllib.request.OpenerDirector, request: urllib.request.Request, timeout: float
) -> _Response:
    """Any HTTP answer (also 4xx/5xx) as a `_Response`; transport failures as `_PollError`."""
    what = f"{request.get_method()} {request.full_url}"
    try:
        with opener.open(request, timeout=timeout) as response:
            return _Response(response.status, response.headers, response.read(_MAX_BODY_BYTES))
    except urllib.error.HTTPError as error:
        with error:
            body = error.read(_MAX_BODY_BYTES) if error.fp is not None else b""
        return _Response(error.code, error.headers, body)
    except urllib.error.URLError as error:
        kind = _transport_error_kind(error.reason)
        raise _PollError(kind, f"{what}: {kind} ({error.reason})") from None
    except (OSError, http.client.HTTPException) as error:
        # A timeout while reading the answer arrives here, not as a URLError.
        kind = _transport_error_kind(error)
        raise _PollError(kind, f"{what}: {kind} ({error!r})") from None


def _transport_error_kind(reason: object) -> str:
    if isinstance(reason, TimeoutError):  # socket.timeout is TimeoutError since 3.10
        return "timeout"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return "name not resolved"
    if isinstance(reason, http.client.HTTPException):
        return "malformed HTTP response"
    if isinstance(reason, BaseException):
        return type(reason).__name__
    return "unreachable"


def _status_error(what: str, response: _Response) -> _PollError:
    snippet = response.body[:80].decode("utf-8", "replace").strip()
    return _PollError(f"HTTP {response.status}", f"{what}: HTTP {response.status} {snippet!r}")


class _ErrorLog:
    """Log each kind of polling failure once per source, not once per poll.

    A metadata server that is down stays down for the whole job; a warning
    every five seconds would bury the training log.
    """

    def __init__(self, source_name: str) -> None:
        self._source_name = source_name
        self._logged_kinds: set[str] = set()

    def report(self, error: _PollError, exc_info: bool = False) -> None:
        if error.kind in self._logged_kinds:
            logger.debug("%s preemption notices: %s", self._source_name, error)
            return
        self._logged_kinds.add(error.kind)
        logger.warning(
            "%s preemption notices: poll failed: %s (polling continues; further %r failures "
            "from this source are not logged)",
            self._source_name,
            error,
            error.kind,
            exc_info=exc_info,
        )


class _MetadataSource:
    """Shared behaviour: `check` never raises, failures are logged once per kind."""

    name = ""

    def __init__(self, base_url: str, timeout: float) -> None:
        _validate_base_url("base_url", base_url)
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds; got {timeout!r}")
        self._base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._opener = _build_opener()
        self._errors = _ErrorLog(self.name)

    def check(self) -> PreemptionNotice | None:
        """One poll: the notice if there is one, else None (also when the poll failed)."""
        return self._poll()[1]

    def probe(self) -> bool:
        """Whether this source answers like its metadata server. Failures log at debug only:
        under `auto`, the other cloud's server is expected to be absent."""
        try:
            self._query()
        except _PollError as error:
            logger.debug("%s preemption notices: probe failed: %s", self.name, error)
            return False
        except Exception:
            logger.debug("%s preemption notices: probe failed", self.name, exc_info=True)
            return False
        return True

    def _poll(self) -> tuple[bool, PreemptionNotice | None]:
        """(answered, notice). The watcher needs `answered`: a failed poll must not
        end an ongoing notice, a successful poll without one does."""
        try:
            return True, self._query()
        except _PollError as error:
            self._errors.report(error)
        except Exception as error:
            # A bug here must not stop the watcher; log it (once) with its traceback.
            self._errors.report(_PollError(type(error).__name__, repr(error)), exc_info=True)
        return False, None

    def _query(self) -> PreemptionNotice | None:
        raise NotImplementedError

    def _url(self, path: str) -> str:
        return f"{self._base_url}{path}"


# --------------------------------------------------------------------------
# GCE


_GCE_INSTANCE_PATH = "/computeMetadata/v1/instance/"
_GCE_TOKEN_VALUE = re.compile(r"[A-Z][A-Z0-9_]*")


class GceMetadataSource(_MetadataSource):
    """GCE: `instance/preempted` (TRUE once a spot/preemptible VM is being
    stopped) and `instance/maintenance-event` (NONE, or the kind of maintenance
    coming, e.g. TERMINATE_ON_HOST_MAINTENANCE).

    Any maintenance event other than NONE counts as a notice, including
    MIGRATE_ON_HOST_MAINTENANCE: a live migration usually succeeds, but an extra
    checkpoint costs seconds and a failed migration costs the work since the
    last one.

    Example::

        notice = GceMetadataSource("http://metadata.google.internal").check()
    """

    name = "gce"

    def __init__(self, base_url: str = GCE_DEFAULT_BASE_URL, timeout: float = 1.0) -> None:
        super().__init__(base_url, timeout)

    def _query(self) -> PreemptionNotice | None:
        if self._get("preempted") == "TRUE":
            return PreemptionNotice(self.name, "instance/preempted=TRUE", None)
        event = self._get("maintenance-event")
        if event != "NONE":
            return PreemptionNotice(self.name, f"instance/maintenance-event={event}", None)
        return None

    def _get(self, key: str) -> str:
        url = self._url(_GCE_INSTANCE_PATH + key)
        # GCE refuses requests without this header (403), so that a server
        # tricked into fetching a URL for someone else (SSRF) cannot read the
        # metadata: a plain redirect or <img> cannot add it.
        request = urllib.request.Request(url, headers={"Metadata-Flavor": "Google"})
        response = _fetch(self._opener, request, self._timeout)
        if response.status != 200:
            raise _status_error(f"GET {url}", response)
        # The real server always answers with the same header. Without it the
        # answer comes from something else that owns the name (a captive
        # portal, a corporate DNS wildcard, another cloud's metadata server),
        # and its 200 must not be read as a verdict on preemption.
        if response.headers.get("Metadata-Flavor") != "Google":
            raise _PollError(
                "not a GCE metadata server",
                f"GET {url}: the answer lacks the 'Metadata-Flavor: Google' header",
            )
        value = response.body.decode("ascii", "replace").strip()
        if key == "preempted":
            valid = value in ("TRUE", "FALSE")
        else:
            valid = _GCE_TOKEN_VALUE.fullmatch(value) is not None
        if not valid:
            raise _PollError("unexpected body", f"GET {url}: unexpected body {value[:80]!r}")
        return value


# --------------------------------------------------------------------------
# AWS


_AWS_TOKEN_PATH = "/latest/api/token"
_AWS_INSTANCE_ACTION_PATH = "/latest/meta-data/spot/instance-action"
_AWS_MAX_TOKEN_TTL_SECONDS = 21600  # the IMDS maximum: six hours


class AwsImdsSource(_MetadataSource):
    """AWS: `spot/instance-action` through IMDSv2. 404 means nothing is
    scheduled; 200 carries {"action": "terminate"|"stop"|"hibernate", "time": ...},
    about two minutes ahead of the interruption.

    IMDSv2 (a session token from a PUT, sent back as a header) rather than
    IMDSv1's plain GET: many instances run with IMDSv1 disabled
    (HttpTokens=required, the default on recent AMIs), where only v2 works,
    and v2 works everywhere. The token is cached until shortly before it
    expires, and refetched at once when the service answers 401 (it was
    revoked, or the clocks disagree).

    In a container on a bridge network the token PUT needs the instance's
    HttpPutResponseHopLimit to be at least 2; with the default of 1 the answer
    never reaches the container and polling times out.

    Example::

        notice = AwsImdsSource("http://169.254.169.254").check()

    Args:
        base_url: the instance metadata service.
        timeout: seconds allowed for each HTTP request.
        token_ttl_seconds: the lifetime requested for each token (1..21600).
        clock: monotonic seconds, for the token's expiry (tests pass a fake one).
    """

    name = "aws"

    def __init__(
        self,
        base_url: str = AWS_DEFAULT_BASE_URL,
        timeout: float = 1.0,
        token_ttl_seconds: int = _AWS_MAX_TOKEN_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(base_url, timeout)
        if not 1 <= token_ttl_seconds <= _AWS_MAX_TOKEN_TTL_SECONDS:
            raise ValueError(
                f"token_ttl_seconds must be in 1..{_AWS_MAX_TOKEN_TTL_SECONDS}; "
                f"got {token_ttl_seconds!r}"
            )
        self._token_ttl_seconds = token_ttl_seconds
        # Refresh ahead of expiry so a token never expires between our check
        # and the service's; a tenth of the lifetime, at most a minute.
        self._token_refresh_margin = min(60.0, token_ttl_seconds / 10)
        self._clock = clock
        self._token: str | None = None
        self._token_refresh_at = 0.0

    def _query(self) -> PreemptionNotice | None:
        response = self._get_instance_action(self._session_token())
        if response.status == 401:
            self._token = None
            response = self._get_instance_action(self._session_token())
        if response.status == 404:
            return None
        url = self._url(_AWS_INSTANCE_ACTION_PATH)
        if response.status != 200:
            raise _status_error(f"GET {url}", response)
        action, when, deadline = _parse_instance_action(url, response.body)
        return PreemptionNotice(self.name, f"spot/instance-action {action} at {when}", deadline)

    def _get_instance_action(self, token: str) -> _Response:
        request = urllib.request.Request(
            self._url(_AWS_INSTANCE_ACTION_PATH), headers={"X-aws-ec2-metadata-token": token}
        )
        return _fetch(self._opener, request, self._timeout)

    def _session_token(self) -> str:
        now = self._clock()
        if self._token is not None and now < self._token_refresh_at:
            return self._token
        url = self._url(_AWS_TOKEN_PATH)
        request = urllib.request.Request(
            url,
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": str(self._token_ttl_seconds)},
        )
        response = _fetch(self._opener, request, self._timeout)
        if response.status != 200:
            raise _status_error(f"PUT {url}", response)
        token = response.body.decode("ascii", "replace").strip()
        # The token goes back in a header: refuse anything that cannot be one.
        if not token or not token.isprintable() or not token.isascii():
            raise _PollError("unexpected body", f"PUT {url}: unusable token {token[:80]!r}")
        self._token = token
        self._token_refresh_at = now + self._token_ttl_seconds - self._token_refresh_margin
        return token


def _parse_instance_action(url: str, body: bytes) -> tuple[str, str, float]:
    """(action, time as sent, deadline as time.time() seconds) from the JSON answer."""
    try:
        document = json.loads(body)
        action = document["action"]
        when = document["time"]
        if not isinstance(action, str) or not isinstance(when, str):
            raise TypeError("action and time must be strings")
        # fromisoformat only accepts a trailing "Z" from Python 3.11 on.
        moment = datetime.datetime.fromisoformat(when.replace("Z", "+00:00"))
    except (ValueError, KeyError, TypeError) as error:
        snippet = body[:80].decode("utf-8", "replace")
        raise _PollError(
            "unexpected body", f"GET {url}: unexpected body {snippet!r} ({error})"
        ) from None
    if moment.tzinfo is None:  # IMDS times are UTC
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return action, when, moment.timestamp()


# --------------------------------------------------------------------------
# Selection, one-shot poll, watcher


def _candidate_sources(config: NoticeConfig) -> list[_MetadataSource]:
    sources: list[_MetadataSource] = []
    if config.kind in ("gce", "auto"):
        sources.append(GceMetadataSource(config.gce_base_url, config.timeout))
    if config.kind in ("aws", "auto"):
        sources.append(AwsImdsSource(config.aws_base_url, config.timeout))
    return sources


def _select_sources(config: NoticeConfig) -> list[_MetadataSource]:
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
                answered, notice = source._poll()
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
        logger.info("preemption notice from %s: %s", notice.source, notice.detail)
        try:
            self._on_notice(notice)
        except Exception:
            logger.exception("preemption notices: on_notice raised; polling continues")
