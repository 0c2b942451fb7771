"""AWS's instance metadata service (IMDSv2): `spot/instance-action`."""

from __future__ import annotations

import datetime
import json
import time
import urllib.request
from collections.abc import Callable

from ftharness.notices.http import MetadataSource, PollError, Response, fetch, status_error
from ftharness.notices.notice import AWS_DEFAULT_BASE_URL, PreemptionNotice

_AWS_TOKEN_PATH = "/latest/api/token"
_AWS_INSTANCE_ACTION_PATH = "/latest/meta-data/spot/instance-action"
_AWS_MAX_TOKEN_TTL_SECONDS = 21600  # the IMDS maximum: six hours


class AwsImdsSource(MetadataSource):
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
            raise status_error(f"GET {url}", response)
        action, when, deadline = _parse_instance_action(url, response.body)
        return PreemptionNotice(self.name, f"spot/instance-action {action} at {when}", deadline)

    def _get_instance_action(self, token: str) -> Response:
        request = urllib.request.Request(
            self._url(_AWS_INSTANCE_ACTION_PATH), headers={"X-aws-ec2-metadata-token": token}
        )
        return fetch(self._opener, request, self._timeout)

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
        response = fetch(self._opener, request, self._timeout)
        if response.status != 200:
            raise status_error(f"PUT {url}", response)
        token = response.body.decode("ascii", "replace").strip()
        # The token goes back in a header: refuse anything that cannot be one.
        if not token or not token.isprintable() or not token.isascii():
            raise PollError("unexpected body", f"PUT {url}: unusable token {token[:80]!r}")
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
        raise PollError(
            "unexpected body", f"GET {url}: unexpected body {snippet!r} ({error})"
        ) from None
    if moment.tzinfo is None:  # IMDS times are UTC
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return action, when, moment.timestamp()
