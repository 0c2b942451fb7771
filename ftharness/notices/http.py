"""HTTP details shared by the metadata sources: no proxies, no redirects,
bounded answers, failures as `PollError`, each kind of failure logged once.
Only the standard library (urllib), with short timeouts.
"""

from __future__ import annotations

import http.client
import logging
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from typing import IO, NamedTuple

from ftharness.notices.notice import PreemptionNotice, validate_base_url

logger = logging.getLogger("ftharness.notices")

# Metadata answers are a few bytes; a bound keeps a misbehaving server (or
# whatever answers in its place) from making us read megabytes every poll.
MAX_BODY_BYTES = 64 * 1024


class PollError(Exception):
    """One failed poll. `kind` groups failures for logging once per kind."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Response:
    status: int
    headers: Message
    body: bytes


class NoRedirect(urllib.request.HTTPRedirectHandler):
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


def build_opener() -> urllib.request.OpenerDirector:
    # No proxies: the metadata server is link-local and answers only requests
    # sent straight to it. urllib's default opener would honour http_proxy
    # from the environment, which training images often set.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect)


def fetch(
    opener: urllib.request.OpenerDirector, request: urllib.request.Request, timeout: float
) -> Response:
    """Any HTTP answer (also 4xx/5xx) as a `Response`; transport failures as `PollError`."""
    what = f"{request.get_method()} {request.full_url}"
    try:
        with opener.open(request, timeout=timeout) as response:
            return Response(response.status, response.headers, response.read(MAX_BODY_BYTES))
    except urllib.error.HTTPError as error:
        with error:
            body = error.read(MAX_BODY_BYTES) if error.fp is not None else b""
        return Response(error.code, error.headers, body)
    except urllib.error.URLError as error:
        kind = transport_error_kind(error.reason)
        raise PollError(kind, f"{what}: {kind} ({error.reason})") from None
    except (OSError, http.client.HTTPException) as error:
        # A timeout while reading the answer arrives here, not as a URLError.
        kind = transport_error_kind(error)
        raise PollError(kind, f"{what}: {kind} ({error!r})") from None


def transport_error_kind(reason: object) -> str:
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


def status_error(what: str, response: Response) -> PollError:
    snippet = response.body[:80].decode("utf-8", "replace").strip()
    return PollError(f"HTTP {response.status}", f"{what}: HTTP {response.status} {snippet!r}")


class ErrorLog:
    """Log each kind of polling failure once per source, not once per poll.

    A metadata server that is down stays down for the whole job; a warning
    every five seconds would bury the training log.
    """

    def __init__(self, source_name: str) -> None:
        self._source_name = source_name
        self._logged_kinds: set[str] = set()

    def report(self, error: PollError, exc_info: bool = False) -> None:
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


class PollResult(NamedTuple):
    answered: bool  # the server gave a valid answer (with or without a notice)
    notice: PreemptionNotice | None


class MetadataSource:
    """Shared behaviour: `check` never raises, failures are logged once per kind."""

    name = ""

    def __init__(self, base_url: str, timeout: float) -> None:
        validate_base_url("base_url", base_url)
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds; got {timeout!r}")
        self._base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._opener = build_opener()
        self._errors = ErrorLog(self.name)

    def check(self) -> PreemptionNotice | None:
        """One poll: the notice if there is one, else None (also when the poll failed)."""
        return self.poll().notice

    def probe(self) -> bool:
        """Whether this source answers like its metadata server. Failures log at debug only:
        under `auto`, the other cloud's server is expected to be absent."""
        try:
            self._query()
        except PollError as error:
            logger.debug("%s preemption notices: probe failed: %s", self.name, error)
            return False
        except Exception:
            logger.debug("%s preemption notices: probe failed", self.name, exc_info=True)
            return False
        return True

    def poll(self) -> PollResult:
        """One poll that never raises. The watcher needs `answered`: a failed poll
        must not end an ongoing notice, a successful poll without one does."""
        try:
            return PollResult(True, self._query())
        except PollError as error:
            self._errors.report(error)
        except Exception as error:
            # A bug here must not stop the watcher; log it (once) with its traceback.
            self._errors.report(PollError(type(error).__name__, repr(error)), exc_info=True)
        return PollResult(False, None)

    def _query(self) -> PreemptionNotice | None:
        raise NotImplementedError

    def _url(self, path: str) -> str:
        return f"{self._base_url}{path}"
