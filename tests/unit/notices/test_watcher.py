"""Tests for ftharness.notices against real HTTP servers on 127.0.0.1.

The fake servers behave like the real metadata services where it matters:
GCE answers 403 to requests without `Metadata-Flavor: Google` and tags its
answers with the same header; AWS IMDSv2 answers 401 without a valid session
token and 404 when no spot interruption is scheduled. Nothing here contacts a
real metadata server: every config points both base URLs at 127.0.0.1.
"""

from __future__ import annotations

import datetime
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from metadata_servers import (
    AWS_ACTION_PATH,
    GCE_PREFIX,
    WAIT_SECONDS,
    AwsHandler,
    AwsState,
    FakeServer,
    GceHandler,
    GceState,
    serve,
)

from ftharness.notices import (
    AwsImdsSource,
    GceMetadataSource,
    NoticeConfig,
    NoticeWatcher,
    PreemptionNotice,
    poll_once,
)

FAST_POLL = 0.05


@pytest.fixture
def gce() -> Iterator[FakeServer]:
    yield from serve(GceHandler, GceState())


@pytest.fixture
def aws() -> Iterator[FakeServer]:
    yield from serve(AwsHandler, AwsState())


@pytest.fixture
def closed_url() -> Iterator[str]:
    # Bound but never listening: connections are refused, and the port cannot
    # be handed to anyone else while the test runs.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def notice_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="ftharness.notices")
    return caplog


@pytest.fixture
def make_watcher() -> Iterator[Callable[..., tuple[NoticeWatcher, list[PreemptionNotice]]]]:
    """Start watchers that record their notices; stop them all at teardown."""
    watchers: list[NoticeWatcher] = []

    def make(
        config: NoticeConfig,
        on_notice: Callable[[PreemptionNotice], None] | None = None,
    ) -> tuple[NoticeWatcher, list[PreemptionNotice]]:
        notices: list[PreemptionNotice] = []
        watcher = NoticeWatcher(config, on_notice or notices.append)
        watchers.append(watcher)
        watcher.start()
        return watcher, notices

    yield make
    for watcher in watchers:
        watcher.stop()


def _config(kind: str, gce_url: str, aws_url: str, **overrides: float) -> NoticeConfig:
    settings: dict[str, float] = {"poll_interval": FAST_POLL, "timeout": 1.0, **overrides}
    return NoticeConfig(kind=kind, gce_base_url=gce_url, aws_base_url=aws_url, **settings)


def _wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {WAIT_SECONDS} s waiting for {what}")
        time.sleep(0.01)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name == "ftharness.notices" and record.levelno >= logging.WARNING
    ]


def _get_directly(url: str) -> None:
    """A GET that bypasses any http_proxy in the environment, as the sources do."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    opener.open(url, timeout=WAIT_SECONDS).close()


def _watcher_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("ftharness-notices")]


# --------------------------------------------------------------------------
# GCE


def test_gce_reports_preempted(gce: FakeServer, notice_log: pytest.LogCaptureFixture) -> None:
    source = GceMetadataSource(gce.base_url)

    assert source.check() is None
    gce.state.preempted = "TRUE"
    assert source.check() == PreemptionNotice("gce", "instance/preempted=TRUE", None)
    assert _warnings(notice_log) == []


def test_gce_reports_maintenance_event(gce: FakeServer) -> None:
    gce.state.maintenance_event = "TERMINATE_ON_HOST_MAINTENANCE"

    notice = GceMetadataSource(gce.base_url).check()

    assert notice == PreemptionNotice(
        "gce", "instance/maintenance-event=TERMINATE_ON_HOST_MAINTENANCE", None
    )


def test_gce_sends_metadata_flavor_header(
    gce: FakeServer, notice_log: pytest.LogCaptureFixture
) -> None:
    # The fake is as strict as GCE: without the header, 403.
    with pytest.raises(urllib.error.HTTPError) as refused:
        _get_directly(gce.base_url + GCE_PREFIX + "preempted")
    refused.value.close()
    assert refused.value.code == 403
    gce.state.requests.clear()
    gce.state.preempted = "TRUE"

    notice = GceMetadataSource(gce.base_url).check()

    assert notice is not None  # only possible past the 403
    assert gce.state.requests == [(GCE_PREFIX + "preempted", "Google")]
    assert _warnings(notice_log) == []


def test_gce_ignores_answers_without_metadata_flavor_header(
    gce: FakeServer, notice_log: pytest.LogCaptureFixture
) -> None:
    gce.state.send_flavor_header = False
    gce.state.preempted = "TRUE"
    source = GceMetadataSource(gce.base_url)

    assert [source.check() for _ in range(3)] == [None, None, None]

    [warning] = _warnings(notice_log)
    assert "Metadata-Flavor" in warning.getMessage()


# --------------------------------------------------------------------------
# AWS


def test_aws_fake_requires_a_token(aws: FakeServer) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        _get_directly(aws.base_url + AWS_ACTION_PATH)
    refused.value.close()
    assert refused.value.code == 401


def test_aws_reports_instance_action_with_deadline(
    aws: FakeServer, notice_log: pytest.LogCaptureFixture
) -> None:
    source = AwsImdsSource(aws.base_url)

    assert source.check() is None  # 404: nothing scheduled
    aws.state.instance_action = {"action": "terminate", "time": "2026-11-22T08:22:00Z"}
    notice = source.check()

    expected = datetime.datetime(2026, 11, 22, 8, 22, tzinfo=datetime.timezone.utc)
    assert notice == PreemptionNotice(
        "aws", "spot/instance-action terminate at 2026-11-22T08:22:00Z", expected.timestamp()
    )
    # One token for both polls, with the lifetime asked for in the header.
    assert aws.state.token_ttl_headers == ["21600"]
    assert aws.state.unauthorized_answers == 0
    assert _warnings(notice_log) == []


def test_aws_refetches_token_after_401(
    aws: FakeServer, notice_log: pytest.LogCaptureFixture
) -> None:
    source = AwsImdsSource(aws.base_url)
    assert source.check() is None
    aws.state.tokens.clear()  # revoked / expired on the service's side
    aws.state.instance_action = {"action": "stop", "time": "2026-11-22T08:22:00Z"}

    notice = source.check()

    assert notice is not None and notice.detail.startswith("spot/instance-action stop")
    assert len(aws.state.token_ttl_headers) == 2
    assert aws.state.unauthorized_answers == 1
    assert _warnings(notice_log) == []


def test_aws_refreshes_token_before_it_expires(aws: FakeServer) -> None:
    now = [1000.0]
    source = AwsImdsSource(aws.base_url, token_ttl_seconds=60, clock=lambda: now[0])

    source.check()
    now[0] += 30
    source.check()
    assert len(aws.state.token_ttl_headers) == 1  # still cached
    now[0] += 25  # within the refresh margin of the 60 s lifetime
    source.check()

    assert aws.state.token_ttl_headers == ["60", "60"]
    assert aws.state.unauthorized_answers == 0


# --------------------------------------------------------------------------
# Failures: never raise, never a notice, logged once per kind


def _make_unreachable(server: FakeServer, failure: str) -> None:
    state = server.state
    if failure == "500":
        state.forced_status = 500
    elif failure == "garbage":
        state.forced_body = "<html>captive portal</html>"
    elif failure == "slow":
        state.slow = True


@pytest.mark.parametrize("failure", ["closed", "500", "garbage", "slow"])
@pytest.mark.parametrize("kind", ["gce", "aws"])
def test_failures_are_quiet_and_logged_once(
    kind: str,
    failure: str,
    gce: FakeServer,
    aws: FakeServer,
    closed_url: str,
    notice_log: pytest.LogCaptureFixture,
) -> None:
    server = gce if kind == "gce" else aws
    _make_unreachable(server, failure)
    base_url = closed_url if failure == "closed" else server.base_url
    source_class = GceMetadataSource if kind == "gce" else AwsImdsSource
    source = source_class(base_url, timeout=0.2)

    assert [source.check() for _ in range(3)] == [None, None, None]

    [warning] = _warnings(notice_log)
    expected_kind = {
        "closed": "connection refused",
        "500": "HTTP 500",
        "garbage": "unexpected body",
        "slow": "timeout",
    }[failure]
    assert expected_kind in warning.getMessage()


def test_each_error_kind_is_logged_once(
    gce: FakeServer, notice_log: pytest.LogCaptureFixture
) -> None:
    source = GceMetadataSource(gce.base_url)
    gce.state.forced_status = 500
    source.check()
    source.check()
    gce.state.forced_status = 502
    source.check()
    source.check()

    messages = [record.getMessage() for record in _warnings(notice_log)]
    assert len(messages) == 2
    assert "HTTP 500" in messages[0] and "HTTP 502" in messages[1]


def test_watcher_survives_failing_server(
    gce: FakeServer, make_watcher: Callable, notice_log: pytest.LogCaptureFixture
) -> None:
    gce.state.forced_status = 500
    watcher, notices = make_watcher(_config("gce", gce.base_url, gce.base_url))

    _wait_for(lambda: len(gce.state.requests) >= 5, "five polls")
    watcher.stop()

    assert notices == []
    assert len(_warnings(notice_log)) == 1
    assert _watcher_threads() == []


# --------------------------------------------------------------------------
# Watcher


def test_watcher_calls_on_notice_once_for_an_ongoing_notice(
    gce: FakeServer, closed_url: str, make_watcher: Callable
) -> None:
    watcher, notices = make_watcher(_config("gce", gce.base_url, closed_url))
    _wait_for(lambda: len(gce.state.requests) >= 4, "two quiet polls")
    assert notices == []

    gce.state.preempted = "TRUE"
    _wait_for(lambda: len(notices) == 1, "the notice")
    polls_at_notice = len(gce.state.requests)
    _wait_for(lambda: len(gce.state.requests) >= polls_at_notice + 5, "five more polls")
    watcher.stop()

    assert notices == [PreemptionNotice("gce", "instance/preempted=TRUE", None)]
    assert _watcher_threads() == []


def test_watcher_reports_again_after_a_notice_clears(
    aws: FakeServer, closed_url: str, make_watcher: Callable
) -> None:
    aws.state.instance_action = {"action": "stop", "time": "2026-11-22T08:22:00Z"}
    _, notices = make_watcher(_config("aws", closed_url, aws.base_url))
    _wait_for(lambda: len(notices) == 1, "the first notice")

    aws.state.instance_action = None  # a successful poll without a notice ends it
    polls = aws.state.action_requests
    _wait_for(lambda: aws.state.action_requests >= polls + 2, "two quiet polls")
    aws.state.instance_action = {"action": "terminate", "time": "2026-11-22T09:00:00Z"}
    _wait_for(lambda: len(notices) == 2, "the second notice")

    assert [notice.detail.split()[1] for notice in notices] == ["stop", "terminate"]


def test_failed_polls_do_not_end_an_ongoing_notice(
    gce: FakeServer, closed_url: str, make_watcher: Callable
) -> None:
    gce.state.preempted = "TRUE"
    _, notices = make_watcher(_config("gce", gce.base_url, closed_url))
    _wait_for(lambda: len(notices) == 1, "the notice")

    gce.state.forced_status = 503
    polls = len(gce.state.requests)
    _wait_for(lambda: len(gce.state.requests) >= polls + 3, "three failed polls")
    gce.state.forced_status = None
    polls = len(gce.state.requests)
    _wait_for(lambda: len(gce.state.requests) >= polls + 3, "three more polls")

    assert len(notices) == 1


def test_stop_wakes_the_sleep(gce: FakeServer, closed_url: str, make_watcher: Callable) -> None:
    watcher, _ = make_watcher(_config("gce", gce.base_url, closed_url, poll_interval=3600))
    _wait_for(lambda: len(gce.state.requests) >= 2, "the first poll")

    started = time.monotonic()
    watcher.stop(timeout=WAIT_SECONDS)

    # Without the Event the thread would sleep for an hour: the join would
    # time out and the thread would still be there.
    assert _watcher_threads() == []
    assert time.monotonic() - started < WAIT_SECONDS


def test_on_notice_errors_do_not_stop_the_watcher(
    gce: FakeServer,
    closed_url: str,
    make_watcher: Callable,
    notice_log: pytest.LogCaptureFixture,
) -> None:
    calls: list[PreemptionNotice] = []

    def failing_on_notice(notice: PreemptionNotice) -> None:
        calls.append(notice)
        raise BrokenPipeError("supervisor pipe closed")

    gce.state.preempted = "TRUE"
    make_watcher(_config("gce", gce.base_url, closed_url), failing_on_notice)
    _wait_for(lambda: len(calls) == 1, "the notice")
    polls = len(gce.state.requests)
    _wait_for(lambda: len(gce.state.requests) >= polls + 3, "polling to go on")

    assert len(calls) == 1
    assert any("on_notice raised" in r.getMessage() for r in _warnings(notice_log))


def test_kind_none_polls_nothing(make_watcher: Callable) -> None:
    watcher, notices = make_watcher(NoticeConfig())

    assert _watcher_threads() == []
    assert poll_once(NoticeConfig()) is None
    watcher.stop()
    assert notices == []


# --------------------------------------------------------------------------
# auto


def test_auto_picks_aws_when_only_aws_answers(
    aws: FakeServer,
    closed_url: str,
    make_watcher: Callable,
    notice_log: pytest.LogCaptureFixture,
) -> None:
    aws.state.instance_action = {"action": "terminate", "time": "2026-11-22T08:22:00Z"}
    config = _config("auto", closed_url, aws.base_url)

    notice = poll_once(config)
    _, notices = make_watcher(config)
    _wait_for(lambda: len(notices) == 1, "the watcher's notice")

    assert notice is not None and notice.source == "aws"
    assert notices[0].source == "aws"
    assert any("auto selected aws" in r.getMessage() for r in notice_log.records)
    assert _warnings(notice_log) == []  # the absent GCE server is expected under auto


def test_auto_stops_polling_a_source_that_did_not_answer(
    gce: FakeServer, aws: FakeServer, make_watcher: Callable
) -> None:
    gce.state.forced_status = 500
    make_watcher(_config("auto", gce.base_url, aws.base_url))
    _wait_for(lambda: aws.state.action_requests >= 2, "aws polls")
    gce_requests = len(gce.state.requests)
    _wait_for(lambda: aws.state.action_requests >= 6, "more aws polls")

    assert gce_requests >= 1  # it was probed ...
    assert len(gce.state.requests) == gce_requests  # ... and then dropped


def test_auto_with_no_answering_source_logs_once_and_polls_nothing(
    closed_url: str, make_watcher: Callable, notice_log: pytest.LogCaptureFixture
) -> None:
    config = _config("auto", closed_url, closed_url)

    assert poll_once(config) is None
    make_watcher(config)
    _wait_for(lambda: _watcher_threads() == [], "the watcher thread to finish")

    warnings = _warnings(notice_log)
    assert len(warnings) == 2  # one from poll_once, one from the watcher
    assert all("found no metadata server" in w.getMessage() for w in warnings)


# --------------------------------------------------------------------------
# Config


@pytest.mark.parametrize(
    "settings",
    [
        {"kind": "azure"},
        {"poll_interval": 0},
        {"timeout": -1},
        {"gce_base_url": "file:///etc/passwd"},
    ],
)
def test_config_rejects_bad_settings(settings: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        NoticeConfig(**settings)  # type: ignore[arg-type]
